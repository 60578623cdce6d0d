#!/usr/bin/env bash
# bench/slowloris.sh — memory held by N connections that each send an unfinished request head
# (60 KiB by default, just under Locus's 64 KiB head limit), for Locus and nginx, one worker
# each, proxying to the same backend. Prints RSS idle, peak while the heads are held, and 5 s
# after the clients closed.
#
#   bash bench/slowloris.sh            # N=2000 HEAD=61440
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
N=${N:-2000}; HEAD=${HEAD:-61440}
ulimit -n "$(ulimit -Hn)"  # 2 fds per connection through a proxy, plus the client
source "$HERE/lib.sh"
build_locus
D=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$D"' EXIT
start_echo a "$D"
BACKEND=$ECHO_PORT
one_service "$BACKEND" > "$D/m.yaml"
cat > "$D/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $D/nginx.pid;
error_log $D/nginx-error.log;
events { worker_connections 8192; }
http {
  access_log off;
  large_client_header_buffers 4 64k;
  upstream b { server 127.0.0.1:$BACKEND; keepalive 64; }
  server { listen 127.0.0.1:18081; location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
NGINX

rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }

measure() { # name pid addr
  local name=$1 pid=$2 addr=$3 idle peak=0 after held_fds=0
  sleep 0.5
  idle=$(rss "$pid")
  python3 "$HERE/slowloris.py" "$addr" "$N" "$HEAD" 5 > "$D/$name.client" &
  local client=$!
  until grep -q "holding done" "$D/$name.client" 2>/dev/null; do
    r=$(rss "$pid"); peak=$(python3 -c "print(max($peak, $r))")
    f=$(fds "$pid"); [ "$f" -gt "$held_fds" ] && held_fds=$f
    sleep 0.2
  done
  wait $client
  sleep 5
  after=$(rss "$pid")
  printf "%-8s %s  idle %6s MiB  peak %7s MiB  after close %6s MiB  peak fds %s\n" \
    "$name" "$(head -1 "$D/$name.client")" "$idle" "$peak" "$after" "$held_fds"
}

"$LOCUS" serve -f "$D/m.yaml" --workers 1 --bind 127.0.0.1 --admin off --max-connections 100000 > "$D/locus.out" 2>&1 &
LPID=$!
until grep -q "listening port=8080" "$D/locus.out"; do sleep 0.05; done
measure locus "$LPID" 127.0.0.1:8080

nginx -c "$D/nginx.conf" > /dev/null 2>&1 &
sleep 0.5
# The worker holds the connections, not the master.
NPID=$(pgrep -P "$(cat "$D/nginx.pid")" | head -1)
measure nginx "$NPID" 127.0.0.1:18081
