#!/usr/bin/env node
// A pull consumer for event-router (docs/consumers.md): Node 18 or newer, no dependencies.
//
// Environment: ROUTER_URL, AGENT_ID, AGENT_KEY (the agent's own apiKey); optional CONSUMER (a
// name for this process), BATCH (deliveries per poll, default 10), MAX_EVENTS (exit after acking
// that many; default: run until stopped). Prints "acked <delivery id> <event id>" on stdout for
// each delivery it handled and acked; everything else goes to stderr.
'use strict';

const os = require('node:os');

const env = (name, fallback) => {
  const value = process.env[name] || fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};
const ROUTER_URL = env('ROUTER_URL').replace(/\/+$/, '');
const AGENT_ID = env('AGENT_ID');
const AGENT_KEY = env('AGENT_KEY');
const CONSUMER = env('CONSUMER', `${os.hostname()}-${process.pid}`);
const BATCH = Number(env('BATCH', '10'));
const MAX_EVENTS = Number(env('MAX_EVENTS', '0'));
const WAIT_MS = 20_000; // long-poll: the router answers as soon as a delivery is ready
const LEASE_MS = 30_000; // time to handle a batch before its deliveries go to someone else

const DELIVERIES = `${ROUTER_URL}/agents/${encodeURIComponent(AGENT_ID)}/deliveries`;

// An answer that trying again will not change: a wrong key, an unknown or push agent.
class Refused extends Error {}

const log = (message) => console.error(`consumer ${CONSUMER}: ${message}`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function call(method, url, body, timeoutMs = 10_000) {
  const response = await fetch(url, {
    method,
    headers: {
      authorization: `Bearer ${AGENT_KEY}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await response.text();
  if ([400, 401, 403, 404, 409].includes(response.status)) {
    throw new Refused(`${method} ${url.split('?')[0]}: ${response.status} ${text}`);
  }
  if (!response.ok) throw new Error(`${method} ${url.split('?')[0]}: ${response.status} ${text}`);
  return JSON.parse(text);
}

// Runs attempt(), trying again on network errors and 5xx answers.
async function withRetries(what, attempt, tries = 5) {
  for (let n = 1; ; n++) {
    try {
      return await attempt();
    } catch (e) {
      if (e instanceof Refused || n === tries) throw e;
      log(`${what} failed (${e.message}); trying again in ${n} s`);
      await sleep(n * 1000);
    }
  }
}

function poll(max) {
  const query = new URLSearchParams({
    max: String(max), waitMs: String(WAIT_MS), leaseMs: String(LEASE_MS), consumer: CONSUMER,
  });
  return call('GET', `${DELIVERIES}?${query}`, undefined, WAIT_MS + 10_000);
}

// Your work goes here. Throw to fail the attempt: the route's retry policy then decides when
// the delivery comes back (to this consumer or another), or dead-letters it. A delivery can
// come more than once (at-least-once), so make this idempotent on event.id.
async function handle(event) {
  log(`${event.source} ${event.type} ${event.action} ${event.id}`);
}

async function main() {
  let ackedTotal = 0;
  let failures = 0;
  while (MAX_EVENTS === 0 || ackedTotal < MAX_EVENTS) {
    // Never lease more than is left to do: a lease taken and not handled would only come back
    // to the others when it runs out.
    const wanted = MAX_EVENTS === 0 ? BATCH : Math.min(BATCH, MAX_EVENTS - ackedTotal);
    let answer;
    try {
      answer = await poll(wanted);
      failures = 0;
    } catch (e) {
      if (e instanceof Refused) throw e;
      failures += 1; // the router is down or restarting: back off
      const delay = Math.min(2 ** failures, 30);
      log(`poll failed (${e.message}); polling again in ${delay} s`);
      await sleep(delay * 1000);
      continue;
    }

    const done = [];
    for (const item of answer.items) {
      try {
        await handle(item.event);
        done.push(item);
      } catch (e) {
        log(`delivery ${item.id} failed: ${e.stack || e}`);
        const error = `${e.name || 'Error'}: ${e.message || e}`.slice(0, 500);
        await withRetries('nack', () => call('POST', `${DELIVERIES}/nack`, { ids: [item.id], error }))
          .catch((e2) => log(`nack failed (${e2.message}); the lease will run out instead`));
      }
    }

    if (done.length > 0) {
      // One ack for the whole batch. A handled delivery whose ack is lost comes back once its
      // lease runs out: that is the "at least" of at-least-once.
      const result = await withRetries('ack', () =>
        call('POST', `${DELIVERIES}/ack`, { ids: done.map((item) => item.id) }));
      const acked = new Set(result.acked);
      for (const item of done) {
        if (acked.has(item.id)) {
          process.stdout.write(`acked ${item.id} ${item.eventId}\n`);
          ackedTotal += 1;
        } else {
          log(`delivery ${item.id}: the lease ran out before the ack; it will be delivered again`);
        }
      }
    }

    if (answer.nextPollMs) await sleep(answer.nextPollMs);
  }
}

main().catch((e) => {
  log(e instanceof Refused ? `refused: ${e.message}` : (e.stack || String(e)));
  process.exitCode = e instanceof Refused ? 2 : 1;
});
