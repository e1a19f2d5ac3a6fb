#!/usr/bin/env bash
# Programmatic dependent launch is safe only if no kernel reads an earlier kernel's output
# before griddepcontrol.wait (backend_cuda.cu may launch every one of its kernels with it).
# This checks backend_cuda.cu's PTX on any machine with nvcc: every kernel has a wait (a new
# kernel without pdl_start would race), and the only global loads before it are the products'
# weight streams (ld.global.nc.L1::no_allocate, constant) and attention's kv_len and slot
# (ld.global.cv: copied in at the step's start, two or more kernels back). It does not see what ptxas does
# later: the race test_cuda's test_pdl once caught on the GPU (x read with __ldg, k_matmul_tc)
# was not visible in the PTX; activations are read with ld_act4 for that. A kernel that loads
# before its wait must fail the check.
# usage: pdl_ptx_check.sh BACKEND.ptx
set -uo pipefail
check() { # PTX file -> 0 when clean; prints each violation
  awk '
    /^\.visible \.entry / { name = $3; sub(/\(.*/, "", name); n++; waited[name] = 0; cur = name; next }
    cur != "" && /griddepcontrol\.wait/ { waited[cur] = 1 }
    cur != "" && !waited[cur] && /ld\.global/ && !/L1::no_allocate/ && !/ld\.global\.cv\./ { print "load before the wait in " cur ": " $0; bad++ }
    END {
      for (k in waited) if (!waited[k]) { print "no griddepcontrol.wait in " k; bad++ }
      if (n == 0) { print "no kernels in the PTX"; bad++ }
      exit bad > 0
    }' "$1"
}
PTX=${1:?usage: pdl_ptx_check.sh BACKEND.ptx}
check "$PTX" || { echo "pdl_ptx_check: FAIL ($PTX)"; exit 1; }
# must fail: a kernel that reads its input before waiting
TMP=${DSPARK_TEST_TMP:-/tmp}/pdl_ptx.$$
mkdir -p "$TMP"
printf '.visible .entry k_bad(\n)\n{\n\tld.global.nc.f32 %%f1, [%%rd1];\n\tgriddepcontrol.wait;\n\tret;\n}\n' > "$TMP/bad.ptx"
if check "$TMP/bad.ptx" >/dev/null; then echo "pdl_ptx_check: FAIL (a load before the wait was not caught)"; rm -rf "$TMP"; exit 1; fi
rm -rf "$TMP"
echo "pdl_ptx_check: $(grep -c '^\.visible \.entry ' "$PTX") kernels wait before reading their inputs"
