#!/bin/sh
# The entrypoint of a `ray job submit` (sweep/cluster/submit.sh): `python -m sweep.run ARGS`
# with an interpreter that has the project's dependencies, or at once an error naming the
# interpreter and what it lacks (exit 2), never a ModuleNotFoundError from deep in an import.
#
# Ray runs the entrypoint through /bin/sh with the PATH of the head's `ray start`: started
# with a venv's ray binary but without the venv on PATH, `python` is the system one. The
# interpreter, the first of:
#   1. NEUROREG_PYTHON, when set (submit.sh passes the submitting shell's value to the job);
#   2. the Python environment Ray itself runs in on this node: the job supervisor (a Ray
#      worker titled ray::JobSupervisor, an ancestor of this shell) maps
#      <prefix>/lib/pythonX.Y/site-packages/ray/_raylet.so, so <prefix>/bin/python is the
#      head's own interpreter (Linux /proc);
#   3. python3, then python, on PATH.
set -u

REQUIRED="torch ray optuna yaml pandas pyarrow duckdb"

# The modules of REQUIRED that interpreter $1 cannot import (nothing: it can run the sweep).
lacks() {
    "$1" -c 'import importlib.util as u, sys
print(" ".join(n for n in sys.argv[1:] if u.find_spec(n) is None))' $REQUIRED 2>/dev/null || echo "(it does not run)"
}

# The interpreter of the Python environment whose Ray runs this job, from an ancestor's maps.
ray_python() {
    pid=$$
    for _ in 1 2 3 4 5 6; do
        pid=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f2)
        [ -n "$pid" ] && [ "$pid" -gt 1 ] 2>/dev/null || return 1
        # A Ray worker (its title is ray::<class>): the job supervisor, not any process that imports ray.
        case "$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)" in
            ray::*) ;;
            *) continue ;;
        esac
        lib=$(grep -m1 -o '/[^ ]*/site-packages/ray/_raylet[^ /]*\.so' "/proc/$pid/maps" 2>/dev/null) || continue
        prefix=${lib%/lib/python*/site-packages/ray/_raylet*}
        for py in "$prefix/bin/python" "$prefix/bin/python3"; do
            [ -x "$py" ] && { echo "$py"; return 0; }
        done
        return 1
    done
    return 1
}

tried=""
if [ -n "${NEUROREG_PYTHON:-}" ]; then
    py=$NEUROREG_PYTHON
    missing=$(lacks "$py")
    if [ -z "$missing" ]; then
        echo "job python: $py (NEUROREG_PYTHON)"
        exec "$py" -m sweep.run "$@"
    fi
    echo "error: the job's python $py (NEUROREG_PYTHON) cannot import: $missing; set NEUROREG_PYTHON to the" \
         "python of an environment with the project's requirements (requirements.lock) on the head" >&2
    exit 2
fi

for cand in "$(ray_python):Ray's own environment on the head" "$(command -v python3):python3 on the head's PATH" \
            "$(command -v python):python on the head's PATH"; do
    py=${cand%%:*}
    where=${cand#*:}
    [ -n "$py" ] || continue
    missing=$(lacks "$py")
    if [ -z "$missing" ]; then
        echo "job python: $py ($where)"
        exec "$py" -m sweep.run "$@"
    fi
    tried="$tried
  $py ($where) cannot import: $missing"
done

echo "error: no python on the head can run the sweep:$tried
Start the head from the project's environment (source .venv/bin/activate, then ray start --head), or pass" \
     "NEUROREG_PYTHON=/path/to/.venv/bin/python to sweep/cluster/submit.sh (a python on the head with the" \
     "project's requirements, requirements.lock)" >&2
exit 2
