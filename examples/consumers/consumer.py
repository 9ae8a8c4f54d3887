#!/usr/bin/env python3
"""A pull consumer for event-router (docs/consumers.md), standard library only.

Environment: ROUTER_URL, AGENT_ID, AGENT_KEY (the agent's own apiKey); optional CONSUMER (a
name for this process), BATCH (deliveries per poll, default 10), MAX_EVENTS (exit after acking
that many; default: run until stopped). Prints "acked <delivery id> <event id>" on stdout for
each delivery it handled and acked; everything else goes to stderr.
"""

import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

ROUTER_URL = os.environ["ROUTER_URL"].rstrip("/")
AGENT_ID = os.environ["AGENT_ID"]
AGENT_KEY = os.environ["AGENT_KEY"]
CONSUMER = os.environ.get("CONSUMER") or f"{socket.gethostname()}-{os.getpid()}"
BATCH = int(os.environ.get("BATCH", "10"))
MAX_EVENTS = int(os.environ.get("MAX_EVENTS", "0"))
WAIT_MS = 20_000  # long-poll: the router answers as soon as a delivery is ready
LEASE_MS = 30_000  # time to handle a batch before its deliveries go to someone else

DELIVERIES = f"{ROUTER_URL}/agents/{urllib.parse.quote(AGENT_ID, safe='')}/deliveries"


class Refused(Exception):
    """An answer that trying again will not change: a wrong key, an unknown or push agent."""


def log(message):
    print(f"consumer {CONSUMER}: {message}", file=sys.stderr, flush=True)


def call(method, url, body=None, timeout=10.0):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {AGENT_KEY}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")
        if e.code in (400, 401, 403, 404, 409):
            raise Refused(f"{method} {url.split('?')[0]}: {e.code} {detail}") from None
        raise


def with_retries(what, attempt, tries=5):
    """Runs attempt(), trying again on network errors and 5xx answers."""
    for n in range(1, tries + 1):
        try:
            return attempt()
        except Refused:
            raise
        except (OSError, ValueError) as e:  # URLError, HTTPError 5xx, timeouts, bad JSON
            if n == tries:
                raise
            log(f"{what} failed ({e}); trying again in {n} s")
            time.sleep(n)


def poll(max_items):
    query = urllib.parse.urlencode(
        {"max": max_items, "waitMs": WAIT_MS, "leaseMs": LEASE_MS, "consumer": CONSUMER}
    )
    return call("GET", f"{DELIVERIES}?{query}", timeout=WAIT_MS / 1000 + 10)


def handle(event):
    """Your work goes here. Raise to fail the attempt: the route's retry policy then decides
    when the delivery comes back (to this consumer or another), or dead-letters it. A delivery
    can come more than once (at-least-once), so make this idempotent on event["id"]."""
    log(f"{event['source']} {event['type']} {event.get('action')} {event['id']}")


def main():
    acked_total = 0
    failures = 0
    while MAX_EVENTS == 0 or acked_total < MAX_EVENTS:
        # Never lease more than is left to do: a lease taken and not handled would only come
        # back to the others when it runs out.
        wanted = BATCH if MAX_EVENTS == 0 else min(BATCH, MAX_EVENTS - acked_total)
        try:
            answer = poll(wanted)
            failures = 0
        except (OSError, ValueError) as e:  # the router is down or restarting: back off
            failures += 1
            delay = min(2 ** failures, 30)
            log(f"poll failed ({e}); polling again in {delay} s")
            time.sleep(delay)
            continue

        done = []
        for item in answer["items"]:
            try:
                handle(item["event"])
            except Exception as e:
                log(f"delivery {item['id']} failed: {e!r}")
                try:
                    with_retries("nack", lambda: call(
                        "POST", f"{DELIVERIES}/nack",
                        {"ids": [item["id"]], "error": f"{type(e).__name__}: {e}"[:500]},
                    ))
                except (OSError, ValueError) as e2:
                    log(f"nack failed ({e2}); the lease will run out instead")
            else:
                done.append(item)

        if done:
            # One ack for the whole batch. A handled delivery whose ack is lost comes back once
            # its lease runs out: that is the "at least" of at-least-once.
            result = with_retries("ack", lambda: call(
                "POST", f"{DELIVERIES}/ack", {"ids": [item["id"] for item in done]}
            ))
            acked = set(result["acked"])
            for item in done:
                if item["id"] in acked:
                    print(f"acked {item['id']} {item['eventId']}", flush=True)
                    acked_total += 1
                else:
                    log(f"delivery {item['id']}: the lease ran out before the ack; "
                        "it will be delivered again")

        if answer.get("nextPollMs"):
            time.sleep(answer["nextPollMs"] / 1000)


if __name__ == "__main__":
    try:
        main()
    except Refused as e:
        log(f"refused: {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        # Deliveries leased and not acked return to the agent's queue when their lease runs out.
        sys.exit(130)
