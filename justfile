# zchat tasks. `just` lists them. Run inside the project's venv (see README.md).

set positional-arguments

python := env_var_or_default("PYTHON", "python3")

# List the recipes.
default:
    @{{just_executable()}} --list --justfile {{justfile()}}

# Install zchat in editable mode with the dev tools.
install:
    {{python}} -m pip install -e '.[dev]'

# Run the broker, e.g. `just broker --config zchat/data/zchat.toml`.
broker *ARGS:
    zchat broker "$@"

# Join the chat as NAME, e.g. `just join alice --server tcp://host:5555`.
join NAME *ARGS:
    zchat join "$@"

# Run the test suite (extra arguments go to pytest).
test *ARGS:
    {{python}} -m pytest "$@"

# Lint and type-check.
lint:
    ruff check zchat tests
    mypy zchat

# Run the benchmarks.
bench *ARGS:
    {{python}} benchmarks/run.py "$@"

# The cluster benchmark: SQLite, one broker on PostgreSQL, three on one PostgreSQL, in one
# run with ratios and each broker's costs (docs/PERFORMANCE.md, docs/cluster.md "Capacity").
bench-cluster *ARGS:
    {{python}} benchmarks/cluster.py "$@"

# Format the code and sort imports.
fmt:
    ruff format zchat tests
    ruff check --select I --fix zchat tests

# Chaos: the long fault-injection runs (killed, paused, restarted processes), e.g.
# `just chaos --minutes 10`; prints sent/delivered/lost/duplicated per scenario.
chaos *ARGS:
    {{python}} scripts/chaos.py "$@"

# A cluster to try out: PostgreSQL and three brokers on loopback sharing one database and
# one key pair (docs/cluster.md), e.g. `just cluster --brokers 2`; Ctrl-C stops it all.
cluster *ARGS:
    {{python}} scripts/cluster.py "$@"
