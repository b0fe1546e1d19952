"""fanout's benchmark, one module per concern; `bench/run.py` is its entry (the command line, `main`).

Read it bottom-up: each module imports only modules above it in this list.

    common      where things are, BenchError (a run that could not be measured), the progress log
    scenarios   the Scenario definitions and SCENARIOS, the smart variants and targets
    processes   starting children safely (own session, die with the bench), stopping them by pid,
                free ports, bounded waits
    procfs      /proc readings: CPU time, steal, memory, open files, threads
    metrics     fanout's /metrics: scraping, histogram deltas, the `server` figures
    loadgen     oha and wrk: command lines, environment, reading their outputs into `Measured`
    simulator   the simulated upstream: its command line and its /stats
    contract    the check request before the load
    servers     fanout and the axum + reqwest peer: building them, their command lines
    plan        a run's connections, durations, warm-up pause, window and thresholds
    result      what a run observed, and the JSON line made of it
    measure     `run_one`: one measured run, one function a step
    compare     the comparison lines: fanout / peer, auto against fixed
    report      the table for people on stderr
    plot        --plot (matplotlib, imported only there)
    suite       every scenario in turn: run order, JSON lines, the table at the end
    selfcheck   --self-check: the load generators against known distributions
"""
