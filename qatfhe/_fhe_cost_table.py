"""FHE cost table, written by bench/calibrate_fhe_cost.py (do not edit by hand).

Read by qatfhe.cost; see that module for the model."""

TABLE = {'command': 'python bench/calibrate_fhe_cost.py --max-bits 3 --time-bits 2 --out /tmp/t.py',
 'complexity_per_lookup': {1: {1: 512.0, 2: 30523475.0, 3: 42971936.0},
                           16: {1: 11639114.8125, 2: 34953913.125, 3: 42971936.0},
                           128: {1: 15835622.953125, 2: 36992891.390625, 3: 57004821.0}},
 'how': 'bench/calibrate_fhe_cost.py: k random univariate lookups on k n-bit encrypted inputs, '
        'concrete-python default configuration; complexity = circuit.complexity / k; ms = '
        'median of 3 circuit.run calls / k',
 'key_switch_per_lookup': {1: 0.4375, 2: 0.9375, 3: 1.0},
 'keygen_s': {1: 4.737977091999937, 2: 7.30999871500012},
 'ms_per_lookup': {1: 51.64614912501975, 2: 106.28979850000064},
 'pbs_per_lookup': {1: 0.4375, 2: 0.9375, 3: 1.0},
 'rounded_complexity_per_lookup': {(3, 2): 99697528.0},
 'rounded_lookups': 16,
 'rounded_pbs_per_lookup': {(3, 2): 3.0},
 'seconds_per_complexity': 2.893153940091709e-09,
 'timing_lookups': 8,
 'when': '2026-12-01 09:56 UTC',
 'where': 'x86_64, 2 cores (?), concrete-python 2.11.0'}
