#!/usr/bin/env bash
# Continuous mode on a real tree (issue 15): a copy of /usr/share (~44k files) on /dev/shm,
# `syncd push --watch` -> `syncd serve` on loopback. Measures:
#   1. the first full push;
#   2. the idle CPU of the watching pair over 30 s (both processes, from /proc/PID/stat);
#   3. 1% of the files (every 100th in sorted order) appended to while watching: the time
#      from the last write until the daemon reports converged again, then `diff -r`.
#
#   cargo build --release -p syncd && syncd/benches/watch_usr_share.sh
#
# SYNCD_BIN overrides the binary (default target/release/syncd). Needs python3 and bc.
# Everything it starts is killed and its directory removed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${SYNCD_BIN:-$PWD/target/release/syncd}
W=$(mktemp -d /dev/shm/syncd-watch-bench.XXXX)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir -p "$W/hs" "$W/hr" "$W/dst"
cp -a /usr/share "$W/src"
PORT=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SID=$(SYNCD_HOME=$W/hs "$B" init 2>/dev/null); RID=$(SYNCD_HOME=$W/hr "$B" init 2>/dev/null)
SYNCD_HOME=$W/hr "$B" serve --root "$W/dst" --listen "127.0.0.1:$PORT" --allow "$SID" 2>"$W/serve.log" &
SP=$!; PIDS+=("$SP")
sleep 1
t0=$(date +%s.%N)
SYNCD_HOME=$W/hs "$B" push "$W/src" "127.0.0.1:$PORT" --peer-id "$RID" --delete --watch --control "$W/c.sock" 2>"$W/push.log" &
PP=$!; PIDS+=("$PP")
until SYNCD_HOME=$W/hs "$B" status --control "$W/c.sock" >/dev/null 2>&1; do sleep 0.1; done
echo "first full push of $(find "$W/src" -type f | wc -l) files converged in $(echo "$(date +%s.%N) - $t0" | bc) s"
sleep 2
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
a1=$(ticks "$PP"); b1=$(ticks "$SP"); sleep 30; a2=$(ticks "$PP"); b2=$(ticks "$SP")
echo "idle 30 s: push --watch $(echo "scale=3; ($a2-$a1)*100/$hz/30" | bc)% of a core, serve $(echo "scale=3; ($b2-$b1)*100/$hz/30" | bc)% of a core (one tick = $(echo "scale=3; 100/$hz/30" | bc)%)"
(cd "$W/src" && find . -type f | sort | awk 'NR % 100 == 0') > "$W/list"
python3 - "$W" <<'PY'
import json, os, socket, sys, time
W = sys.argv[1]
paths = [l.strip() for l in open(f"{W}/list")]
def status():
    s = socket.socket(socket.AF_UNIX); s.connect(f"{W}/c.sock")
    s.sendall(b'{"cmd":"status"}\n'); buf = b""
    while not buf.endswith(b"\n"):
        buf += s.recv(65536)
    s.close(); return json.loads(buf)["status"]
for p in paths:
    with open(os.path.join(W, "src", p), "ab") as f:
        f.write(b"1% change\n")
last = time.monotonic(); seen_false = False
while True:
    st = status()
    if not st["converged"]:
        seen_false = True
    elif seen_false:
        break
    if time.monotonic() - last > 60:
        print("not converged within 60 s"); break
    time.sleep(0.002)
print(f"{len(paths)} files (1%) changed: converged {time.monotonic() - last:.3f} s after the last write")
PY
if diff -rq --no-dereference "$W/src" "$W/dst" >/dev/null; then echo "diff -r: clean"; else echo "diff -r: DIFFERS"; exit 1; fi
