#!/bin/bash
# lf.sh MODE [cpus]: LoadedFaults by hand — ws.sh on a 2 GiB image, one thread reading a random page every 2 ms
IMG=${IMG:-/work/tmp/img2g.b} REGIONS=4k:0x0:2G TOUCH="--touch random --pace 2ms --stop-after-pages 2000" exec bash "$(dirname "$0")/ws.sh" "$@"
