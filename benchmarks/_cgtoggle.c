/* Lets a process under callgrind count only chosen stretches of its run: each call toggles
   collection (CALLGRIND_TOGGLE_COLLECT). Built by benchmarks/bench_instructions.py. */
#include <valgrind/callgrind.h>

void lazygrpc_bench_toggle(void) { CALLGRIND_TOGGLE_COLLECT; }
