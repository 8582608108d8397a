/* Nothing: bench/run.sh preloads this to measure what any LD_PRELOAD costs at start-up. */
void uuidlock_bench_empty(void);
void uuidlock_bench_empty(void) {}
