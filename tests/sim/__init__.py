"""A deterministic fault simulator of the engine (in the manner of FoundationDB's and
TigerBeetle's simulations).

One seed gives one schedule: random workflows using every feature of the definition
format (`workflows`), a random schedule of faults over one shared store (`faults`), run
by a simulated cluster of engine processes on virtual time (`world`), then checked
against the invariants of the design and against the fault-free run of the same
workflows and commands (`invariants`). `python -m tests.sim --seed N` replays one
schedule and prints what broke, with the histories.
"""
