# Shared by the scripts/run_*.sh launchers (sourced, not run): argument checks, absolute paths, the config a data
# set picks, the run folder, and running the job with its log. Environment knobs of every launcher:
#   CONFIG_PATH=FILE  config instead of the data set's (e.g. mobilenetv3_config.yaml; relative to the current
#                     folder or to the repository)
#   FOREGROUND=1      wait for the run, show its log and exit with its status (default: run in the background with
#                     the output in the log, as the model zoo's scripts do, and print where the log is)
# Everything after `--` goes to train.py / eval.py unchanged (it comes last, so its keys win).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT="scripts/$(basename "$0")"
if [ -x "$ROOT/.venv/bin/python" ]; then
  PYTHON="$ROOT/.venv/bin/python"
  PATH="$ROOT/.venv/bin:$PATH"  # msrun starts its workers with the `python` found first on PATH
else
  PYTHON=python
fi
# MindSpore's own log: errors only (GLOG_v=3). Its warnings while ranks connect ("Failed to connect to the meta server",
# "Topology build timed out, retry(n/1200)": the scheduler is not up yet, and ranks retry) are dozens of harmless lines
# per run; GLOG_v=2 shows them again
export GLOG_v="${GLOG_v:-3}"
ARGS=()
EXTRA=()
DEVICE=()
PRETRAINED=""

usage() {  # usage [MESSAGE]: the usage line and MESSAGE on stderr, exit 2
  echo "Usage: bash $SCRIPT $USAGE" >&2
  if [ $# -gt 0 ]; then echo "ERROR: $*" >&2; fi
  exit 2
}

fail() {  # fail MESSAGE: a problem of the machine rather than of the arguments
  echo "ERROR: $*" >&2
  exit 1
}

parse_args() {  # parse_args MIN MAX "$@": ARGS = the arguments before `--` (MIN..MAX of them), EXTRA = those after
  local min=$1 max=$2
  shift 2
  while [ $# -gt 0 ]; do
    case $1 in
      --) shift; EXTRA=("$@"); break ;;
      -h | --help) echo "Usage: bash $SCRIPT $USAGE"; exit 0 ;;
      *) ARGS+=("$1"); shift ;;
    esac
  done
  if [ ${#ARGS[@]} -lt "$min" ] || [ ${#ARGS[@]} -gt "$max" ]; then
    usage "expected $min$([ "$min" = "$max" ] || echo " to $max") arguments before '--', got ${#ARGS[@]}"
  fi
}

absolute() {  # absolute VAR PATH WHAT: set VAR to the absolute form of PATH, which must exist
  [ -e "$2" ] || usage "$3 not found: $2"
  printf -v "$1" '%s' "$(readlink -f -- "$2")"
}

check_number() {  # check_number VALUE WHAT [MIN]
  [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge "${3:-0}" ] || usage "$2 must be an integer >= ${3:-0}, got '$1'"
}

pick_config() {  # pick_config DATASET IMAGENET_CONFIG: set DATASET and CONFIG (CONFIG_PATH overrides the choice)
  case $1 in
    cifar10) CONFIG="$ROOT/default_config.yaml" ;;
    imagenet2012) CONFIG="$ROOT/$2" ;;
    *) usage "the data set must be cifar10 or imagenet2012, got '$1'" ;;
  esac
  DATASET=$1
  if [ -n "${CONFIG_PATH:-}" ]; then
    if [ ! -e "$CONFIG_PATH" ] && [ -e "$ROOT/$CONFIG_PATH" ]; then CONFIG_PATH="$ROOT/$CONFIG_PATH"; fi
    absolute CONFIG "$CONFIG_PATH" "CONFIG_PATH"
  fi
}

data_and_pretrained() {  # data_and_pretrained DATASET_PATH [PRETRAINED]: set DATA_PATH and PRETRAINED (absolute)
  absolute DATA_PATH "$1" "DATASET_PATH"
  if [ -n "${2:-}" ]; then absolute PRETRAINED "$2" "PRETRAINED checkpoint"; fi
}

device_args() {  # device_args TARGET DEVICE_ID: DEVICE = (--device_id DEVICE_ID), DEVICE_ID exported; none on CPU
  if [ "$1" != CPU ]; then
    check_number "$2" DEVICE_ID
    export DEVICE_ID=$2
    DEVICE=(--device_id "$DEVICE_ID")
  fi
}

enter_run_dir() {  # enter_run_dir NAME: make <current folder>/NAME the run folder RUN_DIR and go there. A folder that
  # holds an earlier run is left as it is: a new run goes to NAME_2, NAME_3, ...; a resumed one (--resume among the
  # arguments after `--`) continues in the newest of them
  local newest=$1 next=2
  while [ -e "$PWD/$1_$next" ]; do newest="$1_$next"; next=$((next + 1)); done
  RUN_DIR="$PWD/$newest"
  if [[ " ${EXTRA[*]} " == *" --resume "* ]]; then
    if [ "$newest" != "$1" ]; then echo "resuming in the newest run folder: $RUN_DIR"; fi
  elif [ -n "$(ls -A "$RUN_DIR" 2> /dev/null)" ]; then
    RUN_DIR="$PWD/$1_$next"
    echo "$PWD/$newest holds an earlier run (kept): this run goes to $RUN_DIR"
  fi
  mkdir -p "$RUN_DIR"
  cd "$RUN_DIR"
}

train_command() {  # train_command TARGET [ARG...]: CMD = train.py and its arguments (outputs in OUTPUT_DIR, else
  # RUN_DIR)
  CMD=("$ROOT/train.py" --config_path "$CONFIG" --dataset "$DATASET" --dataset_path "$DATA_PATH"
       --device_target "$1" --save_checkpoint_path "${OUTPUT_DIR:-$RUN_DIR}" "${@:2}")
  if [ -n "$PRETRAINED" ]; then CMD+=(--pre_trained "$PRETRAINED"); fi
  CMD+=("${EXTRA[@]}")
}

describe_exit() {  # describe_exit CODE: "exit status N", or "killed by signal N" for CODE < 0 (Python) or > 128 (shell)
  if [ "$1" -lt 0 ]; then
    echo "killed by signal $((-$1))"
  elif [ "$1" -gt 128 ]; then
    echo "killed by signal $(($1 - 128))"
  else
    echo "exit status $1"
  fi
}

process_tree() {  # process_tree PID: PID's descendants, deepest first, then PID
  local child
  for child in $(ps -o pid= --ppid "$1" 2> /dev/null); do process_tree "$child"; done
  echo "$1"
}

kill_tree() {  # kill_tree SIGNAL PID: PID and all its descendants
  local pid
  for pid in $(process_tree "$2"); do kill "-$1" "$pid" 2> /dev/null || true; done
}

stop_ranks() {  # stop_ranks SIGNAL PID: send SIGNAL to the train.py / eval.py ranks among PID and its descendants
  # Only to the ranks: they agree on a step, rank 0 saves, all exit 128 + signal. Not to msrun (its SIGINT handler
  # SIGKILLs every worker at once), mpirun, or msrun's scheduler (the ranks need it until they are done).
  local pid cmdline
  for pid in $(process_tree "$2"); do
    cmdline=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2> /dev/null) || continue
    if [[ $cmdline =~ (train|eval)\.py && ! $cmdline =~ (msrun|mpirun|orted|prterun) ]] \
      && ! grep -qa "MS_ROLE=MS_SCHED" "/proc/$pid/environ" 2> /dev/null; then
      kill "-$1" "$pid" 2> /dev/null || true
    fi
  done
}

stopped_by() {  # stopped_by LOG...: the signal (e.g. SIGTERM) that stopped the run whose logs are LOG..., if any
  { grep -a -h -o -E "stopped by SIG[A-Z]+" "$@" 2> /dev/null || true; } | sed -n '1s/^stopped by //p'
}

launch() {  # launch LOG COMMAND...: run COMMAND (a program or a function) with its output in LOG; RANK_LOGS: a
  # pattern of the ranks' own logs, where a stop on a signal shows
  local log=$1 job viewer status=0 signal caught="" rank_logs summary
  shift
  : > "$log"
  "$@" > "$log" 2>&1 &
  job=$!
  if [ "${FOREGROUND:-0}" != 1 ]; then
    echo "started in the background (pid $job); log: $log"
    wait_for_start "$log" "$job"
    return
  fi
  echo "log: $log"
  tail -n +1 -f --pid="$job" "$log" &
  viewer=$!
  # `wait` (unlike a foreground command) lets a signal in at once: SIGINT or SIGTERM goes on to the ranks only
  # (see stop_ranks), then the job is waited for until it ends. Ctrl-C at a terminal sends SIGINT to the whole
  # foreground process group: msrun runs in a session of its own (msrun_job) so that only this trap passes it on; a
  # hangup (the terminal closed) stops the ranks as SIGTERM does. The exit status names the signal caught here:
  # inside a running graph MindSpore turns SIGINT into SIGTERM (its IntHandler in GraphScheduler::Run), so the ranks
  # say SIGTERM.
  trap 'caught=SIGINT; stop_ranks INT "$job"' INT
  trap 'caught=SIGTERM; stop_ranks TERM "$job"' TERM HUP
  while :; do
    status=0
    wait "$job" || status=$?
    kill -0 "$job" 2> /dev/null || break
  done
  wait "$viewer" || true  # it ends with the job, or earlier on a signal to the whole process group
  trap - INT TERM
  mapfile -t rank_logs < <(compgen -G "${RANK_LOGS:-$log}")
  signal=$(stopped_by "$log" "${rank_logs[@]}")
  if [ -n "$signal" ]; then
    signal=${caught:-$signal}
    status=$((128 + $(kill -l "$signal")))
    echo "stopped by $signal (exit $status): every rank stopped at the same step; the log names the checkpoint" \
      "saved; resume with the same command plus: -- --resume auto" >&2
  elif [ "$status" -ne 0 ]; then
    echo "ERROR: the run failed ($(describe_exit "$status")); log: $log" >&2
  else  # its summary last, where MindSpore's own lines follow it in the log
    summary=$(grep -a -h -E "training finished: |^(\[rank 0\] )?result: " "$log" "${rank_logs[@]}" | tail -n 1) || true
    if [ -n "$summary" ] && [ "$summary" != "$(tail -n 1 "$log")" ]; then echo "$summary"; fi
  fi
  return "$status"
}

wait_for_start() {  # wait_for_start LOG JOB: a background run's first seconds, until its log says it started (train.py:
  # "training ...", just before the first step; eval.py: "evaluating ...") or it ended (then its error and status),
  # at most START_TIMEOUT seconds (default 120: a run waiting for the other machines of a cluster goes on alone)
  local waited=0 status=0
  while kill -0 "$2" 2> /dev/null && [ "$waited" -lt $((${START_TIMEOUT:-120} * 2)) ]; do
    if grep -qa -E "^(\[rank [0-9]+\] )?(training |evaluating )" "$1"; then
      echo "running; follow it with: tail -f $1"
      return 0
    fi
    sleep 0.5
    waited=$((waited + 1))
  done
  if kill -0 "$2" 2> /dev/null; then
    echo "still starting after ${START_TIMEOUT:-120} s; follow it with: tail -f $1"
    return 0
  fi
  wait "$2" || status=$?
  if [ "$status" -ne 0 ]; then
    grep -a -h "ERROR:" "$1" | sort -u | head -n 3 >&2 || true
    echo "ERROR: the run failed at its start ($(describe_exit "$status")); log: $1" >&2
  else
    echo "finished; log: $1"
  fi
  return "$status"
}

standalone_train() {  # standalone_train TARGET RUN_FOLDER IMAGENET_CONFIG "$@": one training process
  local ids=0
  if [ "$1" != CPU ]; then ids=1; fi
  USAGE="[cifar10|imagenet2012] DATASET_PATH$([ $ids = 0 ] || echo " DEVICE_ID") [PRETRAINED] [-- TRAIN_ARGS...]"
  parse_args $((2 + ids)) $((3 + ids)) "${@:4}"
  pick_config "${ARGS[0]}" "$3"
  device_args "$1" "${ARGS[2]:-}"
  data_and_pretrained "${ARGS[1]}" "${ARGS[2 + ids]:-}"
  enter_run_dir "$2"
  train_command "$1" "${DEVICE[@]}"
  launch "$RUN_DIR/log" "$PYTHON" "${CMD[@]}"
}

evaluate() {  # evaluate TARGET IMAGENET_CONFIG "$@": eval.py in ./eval
  local ids=0 checkpoint
  if [ "$1" != CPU ]; then ids=1; fi
  USAGE="[cifar10|imagenet2012] DATASET_PATH CHECKPOINT_PATH$([ $ids = 0 ] || echo " DEVICE_ID") [-- EVAL_ARGS...]"
  parse_args $((3 + ids)) $((3 + ids)) "${@:3}"
  pick_config "${ARGS[0]}" "$2"
  device_args "$1" "${ARGS[3]:-}"
  absolute DATA_PATH "${ARGS[1]}" DATASET_PATH
  absolute checkpoint "${ARGS[2]}" CHECKPOINT_PATH
  enter_run_dir eval
  CMD=("$ROOT/eval.py" --config_path "$CONFIG" --dataset "$DATASET" --dataset_path "$DATA_PATH"
       --device_target "$1" --checkpoint_path "$checkpoint" "${DEVICE[@]}" "${EXTRA[@]}")
  launch "$RUN_DIR/log" "$PYTHON" "${CMD[@]}"
}

report_failed_rank() {  # report_failed_rank LOG WORKERS: name the rank whose exit (msrun reports it in LOG) or whose
  # silence (this machine's scheduler reports it) ended the job; WORKERS: ranks per machine
  local line pid code rank_line lost rank
  lost=$(grep -a -h -o -E "The node: [0-9]+ is timed out" "$RUN_DIR/scheduler.log" 2> /dev/null | grep -o -E "[0-9]+" \
    | sort -un) || true
  for rank in $lost; do
    echo "ERROR: rank $rank was lost (it stopped answering: its process, machine or network failed); its log:" \
      "worker_$rank.log in the run folder of the machine with NODE_RANK $((rank / $2)); the other ranks were" \
      "stopped" >&2
  done
  line=$(grep -a -o -E "Worker process [0-9]+ exit with exception. Error code: -?[0-9]+" "$1" | head -n 1) || true
  if [[ ! $line =~ process\ ([0-9]+).*code:\ (-?[0-9]+) ]]; then
    echo "ERROR: msrun failed before any worker did; see $1 and $RUN_DIR/scheduler.log" >&2
    return
  fi
  pid=${BASH_REMATCH[1]}
  code=${BASH_REMATCH[2]}
  rank_line=$(grep -a -h -o -E "as rank [0-9]+ of [0-9]+ \(pid $pid\)" "$RUN_DIR"/worker_*.log | head -n 1) || true
  if [[ $rank_line =~ rank\ ([0-9]+) ]]; then
    echo "ERROR: rank ${BASH_REMATCH[1]} (pid $pid) failed: $(describe_exit "$code"); its log:" \
      "$RUN_DIR/worker_${BASH_REMATCH[1]}.log; msrun stopped the other ranks" >&2
    if [ "$NODE_NUM" -gt 1 ] && [ -z "$lost" ]; then
      echo "ERROR: this is the machine with NODE_RANK $NODE_RANK of $NODE_NUM: a rank of another machine may have" \
        "failed first; read the logs in the run folders of the other machines" >&2
    fi
  else
    echo "ERROR: a worker (pid $pid) failed before joining the group: $(describe_exit "$code");" \
      "worker logs: $RUN_DIR/worker_*.log" >&2
    grep -a -h "ERROR:" "$RUN_DIR"/worker_*.log | sort -u | head -n 3 >&2 || true
  fi
}

cluster_settings() {  # cluster_settings: check NODE_NUM, NODE_RANK, MASTER_ADDR and MASTER_PORT (several machines)
  NODE_NUM=${NODE_NUM:-1}
  NODE_RANK=${NODE_RANK:-0}
  check_number "$NODE_NUM" NODE_NUM 1
  check_number "$NODE_RANK" NODE_RANK
  [ "$NODE_RANK" -lt "$NODE_NUM" ] || usage "NODE_RANK must be below NODE_NUM ($NODE_NUM), got $NODE_RANK"
  if [ -n "${MASTER_PORT:-}" ]; then
    check_number "$MASTER_PORT" MASTER_PORT 1
    [ "$MASTER_PORT" -le 65535 ] || usage "MASTER_PORT must be a port number (1-65535), got $MASTER_PORT"
  fi
  if [ "$NODE_NUM" -gt 1 ]; then
    [ "${LAUNCHER:-msrun}" = msrun ] || usage "NODE_NUM > 1 (several machines) needs LAUNCHER=msrun"
    [ -n "${MASTER_ADDR:-}" ] || usage "NODE_NUM $NODE_NUM (several machines) needs MASTER_ADDR: the address of" \
      "the machine with NODE_RANK 0, the same on every machine"
    [ -n "${MASTER_PORT:-}" ] || usage "NODE_NUM $NODE_NUM (several machines) needs MASTER_PORT: a free port on" \
      "the machine with NODE_RANK 0, the same on every machine"
  fi
  MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
}

orphaned_processes() {  # orphaned_processes: pids of msrun's ranks and scheduler of this run (output in RUN_DIR)
  local pid cmdline
  for pid in $(pgrep -f -- "--save_checkpoint_path $RUN_DIR" || true); do
    cmdline=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2> /dev/null) || continue
    if [[ "$cmdline " == *"--save_checkpoint_path $RUN_DIR "* ]] && grep -qa "MS_ROLE=" "/proc/$pid/environ"; then
      echo "$pid"
    fi
  done
}

wait_for_orphaned_processes() {  # after msrun: wait for its ranks and scheduler if they outlive it; end its log
  # followers.
  # A SIGTERM to msrun ends msrun alone (it has no handler); its workers then get SIGTERM from the kernel (train.py
  # asks for it, see src/distributed.py) and stop at an agreed step after saving: wait for them (at most 10 min).
  local waited=0
  while [ -n "$(orphaned_processes)" ] && [ "$waited" -lt 600 ]; do
    sleep 1
    waited=$((waited + 1))
  done
  pkill -f -- "tail -f $RUN_DIR/worker_" 2> /dev/null || true  # msrun's, left behind when it was killed
  waited=0
  while pgrep -f -- "tail -f $RUN_DIR/worker_" > /dev/null && [ "$waited" -lt 50 ]; do  # gone before we return
    sleep 0.1
    waited=$((waited + 1))
  done
}

# Holds a free port (printed first) until something listens on it, at most argv[1] seconds, or until its parent ends.
# Bound but not listening, with SO_REUSEADDR, which msrun's scheduler sets too: the scheduler can bind it, while the
# kernel gives it to no other program meanwhile (a port merely found free can be taken before msrun binds it, and
# msrun's workers then wait CLUSTER_TIMEOUT for a scheduler that never started).
PORT_HOLDER='
import os, socket, sys, time
held = socket.socket()
held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
held.bind(("", 0))
port, parent, deadline = held.getsockname()[1], os.getppid(), time.time() + float(sys.argv[1])
print(port, flush=True)

def listening():
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as rows:
                fields = [row.split() for row in rows.readlines()[1:]]
        except OSError:
            continue
        if any(f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port for f in fields):  # 0A: LISTEN
            return True
    return False

while not listening() and time.time() < deadline and os.getppid() == parent:
    time.sleep(0.1)
'

msrun_job() {  # msrun_job WORKERS LOG [train.py and its arguments]: msrun, then name the rank that failed
  local workers=$1 log=$2 status=0 nodes=() fd holder=""
  shift 2
  # a hangup or SIGTERM to the whole process group must not end this shell before msrun (the launcher's trap passes
  # it to the ranks); a trapped signal, unlike an ignored one, is back to default in msrun
  trap ':' HUP TERM
  if [ "$NODE_NUM" -gt 1 ]; then nodes=(--node_rank="$NODE_RANK"); fi
  if [ -z "${MASTER_PORT:-}" ]; then
    exec {fd}< <(exec "$PYTHON" -c "$PORT_HOLDER" "${CLUSTER_TIMEOUT:-600}")
    holder=$!
    read -r MASTER_PORT <&"$fd"
    exec {fd}<&-
  fi
  echo "msrun: $workers ranks on this machine (NODE_RANK $NODE_RANK of $NODE_NUM machines: ranks" \
    "$((NODE_RANK * workers))-$(((NODE_RANK + 1) * workers - 1)) of $((workers * NODE_NUM))), master" \
    "$MASTER_ADDR:$MASTER_PORT; rank logs: $RUN_DIR/worker_<rank>.log"
  # its own session: out of the terminal's process group, whose Ctrl-C its SIGINT handler would answer by SIGKILLing
  # every rank and exiting 0 (mindspore/parallel/cluster/process_entity/_api.py, join_processes)
  setsid --wait msrun --worker_num=$((workers * NODE_NUM)) --local_worker_num="$workers" \
    --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" "${nodes[@]}" --log_dir="$RUN_DIR" --join=True \
    --cluster_time_out="${CLUSTER_TIMEOUT:-600}" "$@" || status=$?
  if [ -n "$holder" ]; then
    kill "$holder" 2> /dev/null || true
    wait "$holder" 2> /dev/null || true
  fi
  wait_for_orphaned_processes
  # ranks that stopped on a signal exit 128 + signal, which msrun reports as a failure
  if [ "$status" -ne 0 ] && [ -z "$(stopped_by "$RUN_DIR"/worker_*.log)" ]; then
    report_failed_rank "$log" "$workers"
  fi
  return "$status"
}

data_parallel_train() {  # data_parallel_train TARGET WORKERS: train.py on WORKERS ranks of this machine (NODE_NUM
  # machines in all) in ./train_parallel
  local launcher=${LAUNCHER:-msrun} log root_flag=()
  case $launcher in
    msrun | mpirun) ;;
    *) usage "LAUNCHER must be msrun or mpirun, got '$launcher'" ;;
  esac
  cluster_settings
  command -v "$launcher" > /dev/null || fail "LAUNCHER=$launcher is not installed (msrun comes with MindSpore:" \
    "bash scripts/setup_env.sh; mpirun with Open MPI)"
  enter_run_dir train_parallel
  log="$RUN_DIR/log.txt"
  if [ "$NODE_NUM" -gt 1 ]; then log="$RUN_DIR/log_node$NODE_RANK.txt"; fi  # machines may share the run folder
  train_command "$1" --run_distribute True
  if [ "$launcher" = msrun ]; then
    command -v setsid > /dev/null || fail "setsid (util-linux) is not installed; msrun runs in a session of its own"
    RANK_LOGS="$RUN_DIR/worker_*.log"
    launch "$log" msrun_job "$2" "$log" "${CMD[@]}"
  else
    if [ "$(id -u)" = 0 ]; then root_flag=(--allow-run-as-root); fi
    launch "$log" mpirun -n "$2" "${root_flag[@]}" --output-filename "$RUN_DIR/log_output" \
      --merge-stderr-to-stdout "$PYTHON" "${CMD[@]}"
  fi
}
