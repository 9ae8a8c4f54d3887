#!/usr/bin/env python3
"""ratio.py (../shared/bench/ratio.py, issue #33's yardstick) with the router's CPU per webhook,
per thread: the tokio workers, the SQLite writer and its checkpointer, from
/proc/<pid>/task/*/stat before and after wrk's run, divided by the requests answered. That is
steadier than the rate on a shared machine. --wrong-secret signs with another secret, so every
webhook is refused at its signature (401): the cost of the HTTP edge alone.

  python3 benches/ratio_threads.py [--e2e] [--wrong-secret] [--database-url URL]

What follows is ratio.py's own description.

How close the router comes to this machine's HTTP ceiling, measured the way a user would:
an external load generator (wrk) posts signed GitHub webhooks to the router and, in the same
run, to nginx answering 200. Run from the project root after `cargo build --release`.

  ../shared/bench/ratio.py                  # ingest: router vs nginx, 128 connections
  ../shared/bench/ratio.py --e2e            # ingest + push delivery to an nginx agent
  ../shared/bench/ratio.py --database-url postgres://postgres@127.0.0.1:5432/DB

Needs wrk and nginx (apt-get install -y wrk nginx-light). Prints one JSON line per run.
Both sides pay the same client cost on the same CPUs: the ratio is the figure to compare."""
import argparse, base64, hashlib, hmac, json, os, re, shutil, signal, socket, subprocess
import tempfile, time, urllib.request

SECRET = "ratio-bench-secret"
WRONG_SECRET = False
ADMIN = "ratio-bench-admin-key-0123456789"


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def get(url, key=None, method="GET", body=None):
    req = urllib.request.Request(url, method=method, data=body)
    if key:
        req.add_header("Authorization", "Bearer " + key)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read() or b"null")


def wait_up(url):
    for _ in range(200):
        try:
            urllib.request.urlopen(url, timeout=1); return
        except Exception as e:
            if hasattr(e, "code"):
                return
            time.sleep(0.05)
    raise SystemExit("no answer from " + url)


def nginx(tmp):
    port = free_port()
    conf = os.path.join(tmp, "nginx.conf")
    open(conf, "w").write(f"""daemon off; worker_processes auto; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off; client_max_body_size 4m; client_body_temp_path {tmp};
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 '{{"ok":true}}'; }} }} }}""")
    p = subprocess.Popen(["nginx", "-c", conf, "-p", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_up(f"http://127.0.0.1:{port}/")
    return f"http://127.0.0.1:{port}", p


def wrk_script(tmp, body):
    sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    path = os.path.join(tmp, "post.lua")
    with open(path, "w") as f:
        f.write("wrk.method = 'POST'\n")
        f.write("wrk.body = %s\n" % json.dumps(body.decode()))
        for k, v in {"Content-Type": "application/json", "X-GitHub-Event": "pull_request",
                     "X-Hub-Signature-256": sig}.items():
            f.write(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n")
        # every request a new delivery id (each wrk thread has its own Lua state and seed)
        f.write("local threads = 0\nsetup = function(t) threads = threads + 1; t:set('tid', threads) end\n"
                "local n = 0\nrequest = function()\n  n = n + 1\n"
                "  wrk.headers['X-GitHub-Delivery'] = string.format('%d-%d-%d-%d', os.time(), tid or 0, math.random(1e9), n)\n"
                "  return wrk.format()\nend\n")
    return path


def wrk(url, script, conns, secs):
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{secs}s", "--latency", "-s", script, url],
                         capture_output=True, text=True).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    dur = float(re.search(r"requests in ([\d.]+)s", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    bad = int(bad.group(1)) if bad else 0
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    p99ms = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)] if p99 else None
    if WRONG_SECRET:
        bad = 0  # every answer is a 401 by design: count the requests
    return {"perSec": round((reqs - bad) / dur), "requests": reqs, "non2xx": bad, "p99ms": p99ms}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/event-router")
    ap.add_argument("--payload", default="examples/github-pull_request.json")
    ap.add_argument("--connections", type=int, default=128)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--e2e", action="store_true", help="also deliver every event to an nginx agent")
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--wrong-secret", action="store_true", help="refuse every webhook (401)")
    a = ap.parse_args()
    global WRONG_SECRET
    WRONG_SECRET = a.wrong_secret
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: apt-get install -y wrk nginx-light")
    body = json.dumps(json.load(open(a.payload)), separators=(",", ":")).encode()
    tmp = tempfile.mkdtemp(prefix="ratio-")
    script = wrk_script(tmp, body)
    ng_url, ng = nginx(tmp)
    port = free_port()
    env = dict(os.environ, GITHUB_WEBHOOK_SECRET=SECRET, ADMIN_API_KEY=ADMIN, LOG_LEVEL="error",
               DATA_DIR=os.path.join(tmp, "data"), DEFAULT_RATE_LIMIT="1000000000", MAX_QUEUE_SIZE="10000000")
    if a.wrong_secret:
        env["GITHUB_WEBHOOK_SECRET"] = "not-the-secret"
    if a.database_url:
        env["DATABASE_URL"] = a.database_url
        env.setdefault("ENCRYPTION_KEY", base64.b64encode(os.urandom(32)).decode())
    router = subprocess.Popen([a.bin, "serve", "--listen", f"127.0.0.1:{port}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "router.log"), "w"))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_up(base + "/health")
        wrk(base + "/webhook/github", script, a.connections, 2)            # warm-up, routed nowhere
        if a.e2e:
            get(base + "/admin/agents", ADMIN, "POST", json.dumps(
                {"id": "sink", "name": "sink", "url": ng_url + "/in", "maxConcurrency": 256}).encode())
            get(base + "/admin/routes", ADMIN, "POST", json.dumps(
                {"id": "all", "name": "all", "sourceFilters": [], "targetAgents": ["sink"], "priority": 1}).encode())
        def cpu():
            f = open(f"/proc/{router.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        def threads():
            out = {}
            for tid in os.listdir(f"/proc/{router.pid}/task"):
                try:
                    comm = open(f"/proc/{router.pid}/task/{tid}/comm").read().strip()
                    f = open(f"/proc/{router.pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                key = ("sqliteWriter" if "writer" in comm else "sqliteCheckpoint" if "checkpoi" in comm
                       else "tokioWorkers" if "tokio" in comm else "other")
                out[key] = out.get(key, 0) + (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
            return out
        c0 = cpu(); t0s = threads()
        t0 = time.time()
        ro = wrk(base + "/webhook/github", script, a.connections, a.seconds)
        ro["cpuUsPerWebhook"] = round((cpu() - c0) * 1e6 / max(ro["requests"], 1), 1)
        t1s = threads()
        ro["threadsUsPerWebhook"] = {k: round((t1s[k] - t0s.get(k, 0)) * 1e6 / max(ro["requests"], 1), 1) for k in t1s}
        report = {"router": ro}
        if a.e2e:
            while time.time() - t0 < a.seconds + 60:
                qs = get(base + "/queue/stats", ADMIN)
                if qs.get("pending", 0) + qs.get("inFlight", 0) + qs.get("scheduled", 0) == 0:
                    break
                time.sleep(0.2)
            qs = get(base + "/queue/stats", ADMIN)
            secs = time.time() - t0
            report["e2e"] = {"delivered": qs.get("delivered"), "deadLettered": qs.get("deadLettered"),
                             "secs": round(secs, 1), "deliveredPerSec": round(qs.get("delivered", 0) / secs)}
        ngr = wrk(ng_url + "/webhook/github", script, a.connections, a.seconds)
        report["nginx"] = ngr
        report["ratio"] = round(ro["perSec"] / ngr["perSec"], 3) if ngr["perSec"] else None
        report["payloadBytes"] = len(body)
        report["loadavg"] = os.getloadavg()[0]
        print(json.dumps(report))
    finally:
        router.send_signal(signal.SIGTERM)
        try:
            router.wait(timeout=15)
        except subprocess.TimeoutExpired:
            router.kill()
        ng.terminate(); ng.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
