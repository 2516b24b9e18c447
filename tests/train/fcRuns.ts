/** Property-test run count: TESSERA_FC_RUNS (npm run test:deep sets 200), default 25. */
export const numRuns = Number(process.env.TESSERA_FC_RUNS ?? 25);
