#!/usr/bin/env bash
# Apache Kafka for sensorcast's tests and benchmarks: a single-node KRaft broker (combined
# broker and controller) run from its jars, on loopback, no Docker.
#
#   scripts/kafka.sh fetch              fetch the pinned jars once (cached by version); prints
#                                       the folder of jars
#   scripts/kafka.sh start DIR [K=V..]  start a broker whose data, logs, ports and PID live in
#                                       DIR. A new DIR gets free loopback ports and is formatted;
#                                       an existing one restarts as the same broker (same
#                                       ports, same topics and offsets). K=V pairs are extra
#                                       server properties for a new DIR. Waits for a real
#                                       Kafka protocol answer (ApiVersions, then Metadata naming
#                                       this broker and an active controller), then prints the
#                                       bootstrap address HOST:PORT on stdout.
#   scripts/kafka.sh stop DIR [--kill]  stop the broker of DIR by its PID: SIGTERM (a clean
#                                       shutdown, the data dir restarts as the same broker), or
#                                       SIGKILL with --kill; waits until the process has gone
#   scripts/kafka.sh topic DIR NAME PARTITIONS [K=V..]
#                                       create a topic on DIR's broker (K=V: topic configs)
#   scripts/kafka.sh address DIR        print the bootstrap address of DIR's broker
#   scripts/kafka.sh version            print the pinned Apache Kafka version
#
# Environment:
#   KAFKA_VERSION        Apache Kafka version (default below; the tested one)
#   SENSORCAST_CACHE     cache folder (default ${XDG_CACHE_HOME:-$HOME/.cache}/sensorcast)
#   KAFKA_HEAP_OPTS      JVM heap options (default -Xmx512m -Xms128m)
#   KAFKA_START_TIMEOUT  seconds to wait for the broker's answer (default 120)
#
# Needs Java 17+ and Maven (the jars come from Maven Central through Maven), and python3 (the
# readiness probe speaks the Kafka protocol itself, so that nothing but the broker's jars is
# needed).
set -euo pipefail

KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
LOG4J_VERSION=2.24.3
SLF4J_VERSION=2.0.17
here=$(cd "$(dirname "$0")" && pwd)
cache=${SENSORCAST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sensorcast}
# The folder names what it holds: a change of what is fetched is a new folder, never a reuse.
libs=$cache/kafka-$KAFKA_VERSION-tools-log4j-$LOG4J_VERSION/libs

die() { echo "kafka.sh: $*" >&2; exit 1; }

fetch() {
  [ -f "$libs/.complete" ] && return 0
  command -v java >/dev/null 2>&1 || die "java is not installed (Apache Kafka $KAFKA_VERSION needs Java 17+)"
  command -v mvn >/dev/null 2>&1 || die "mvn is not installed (the broker's jars come from Maven Central through Maven)"
  local work
  work=$(mktemp -d)
  # A throw-away project whose runtime class path is the broker's and its tools' (topic
  # creation for the benchmark scripts): Kafka 4.x brings no logging
  # backend, so log4j2 is added, and slf4j's 2.x API so that log4j's slf4j2 binding is found.
  cat >"$work/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.sensorcast</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>$SLF4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
  echo "kafka.sh: fetching Apache Kafka $KAFKA_VERSION's jars into $libs (once)" >&2
  rm -rf "$libs.tmp"
  mkdir -p "$libs.tmp"
  (cd "$work" && mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$libs.tmp") >&2 ||
    die "could not fetch Apache Kafka $KAFKA_VERSION's jars with Maven"
  rm -rf "$work"
  ls "$libs.tmp"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 || die "kafka_2.13-$KAFKA_VERSION.jar is missing after the fetch"
  rm -rf "$libs"
  mv "$libs.tmp" "$libs"
  touch "$libs/.complete"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The broker's JVM (into the array `jvm`): the class path of the fetched jars, log4j2 writing
# to DIR/logs.
jvm_for() {
  local dir=$1 heap
  read -r -a heap <<<"${KAFKA_HEAP_OPTS:--Xmx512m -Xms128m}"
  jvm=(java "${heap[@]}" -XX:+UseSerialGC -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$dir/log4j2.properties" -Dkafka.logs.dir="$dir/logs" -cp "$libs/*")
}

write_config() {
  local dir=$1
  shift
  local port cport
  port=$(free_port)
  cport=$(free_port)
  while [ "$cport" = "$port" ]; do cport=$(free_port); done
  mkdir -p "$dir/data" "$dir/logs"
  cat >"$dir/server.properties" <<EOF
# Written by scripts/kafka.sh: a single-node KRaft cluster for sensorcast's tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.cleaner.backoff.ms=1000
EOF
  local kv
  for kv in "$@"; do
    case $kv in
      *=*) printf '%s\n' "$kv" >>"$dir/server.properties" ;;
      *) die "extra server property '$kv' is not KEY=VALUE" ;;
    esac
  done
  cat >"$dir/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $dir/logs/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = info
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = info
EOF
  echo "127.0.0.1:$port" >"$dir/address"
  # A cluster id is 16 random bytes, base64url without padding; one that starts with "-"
  # would read as an option to the storage tool (Kafka's own Uuid.randomUuid skips those too).
  local id
  id=$(python3 -c '
import base64, os
while True:
    s = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break')
  jvm_for "$dir"
  "${jvm[@]}" kafka.tools.StorageTool format -t "$id" -c "$dir/server.properties" \
    >"$dir/logs/format.log" 2>&1 || { cat "$dir/logs/format.log" >&2; die "formatting $dir/data failed"; }
}

# Whether PID is this folder's broker (a stale PID file may name a process that reused it).
is_broker() { grep -qa "$2/server.properties" "/proc/$1/cmdline" 2>/dev/null; }
running() { [ -f "$1/pid" ] && is_broker "$(cat "$1/pid")" "$1"; }

start() {
  local dir=${1:?usage: kafka.sh start DIR [KEY=VALUE...]}
  shift
  fetch
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  running "$dir" && die "a broker of $dir is already running (PID $(cat "$dir/pid"))"
  [ -f "$dir/server.properties" ] || write_config "$dir" "$@"
  local address
  address=$(cat "$dir/address")
  # setsid: the broker is not in the caller's process group, so a test harness's Ctrl-C or a
  # killed shell does not take it down mid-test; it is stopped by its PID.
  jvm_for "$dir"
  setsid "${jvm[@]}" kafka.Kafka "$dir/server.properties" >>"$dir/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
  if ! python3 "$here/kafka_ready.py" "$address" "${KAFKA_START_TIMEOUT:-120}" "$(cat "$dir/pid")"; then
    tail -n 40 "$dir/logs/server.log" "$dir/logs/stdout.log" >&2 2>/dev/null || true
    stop "$dir" --kill || true
    die "the broker of $dir did not answer on $address"
  fi
  echo "$address"
}

stop() {
  local dir=${1:?usage: kafka.sh stop DIR [--kill]} signal=TERM
  [ "${2:-}" = --kill ] && signal=KILL
  [ -f "$dir/pid" ] || return 0
  dir=$(cd "$dir" && pwd)
  local pid
  pid=$(cat "$dir/pid")
  if is_broker "$pid" "$dir"; then
    kill -"$signal" "$pid" 2>/dev/null || true
    # A clean shutdown takes a few seconds; past 60 s it is killed.
    for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "kafka.sh: broker $pid did not stop in 60 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
  fi
  rm -f "$dir/pid"
}

topic() {
  local dir=${1:?usage: kafka.sh topic DIR NAME PARTITIONS [KEY=VALUE...]} name=${2:?topic name} partitions=${3:?partitions}
  shift 3
  local configs=() kv
  for kv in "$@"; do configs+=(--config "$kv"); done
  jvm_for "$dir"
  "${jvm[@]}" org.apache.kafka.tools.TopicCommand --bootstrap-server "$(cat "$dir/address")" --create \
    --topic "$name" --partitions "$partitions" --replication-factor 1 "${configs[@]}" >/dev/null
}

case ${1:-} in
  fetch) fetch && echo "$libs" ;;
  start) shift && start "$@" ;;
  stop) shift && stop "$@" ;;
  topic) shift && topic "$@" ;;
  version) echo "$KAFKA_VERSION" ;;
  address) cat "${2:?usage: kafka.sh address DIR}/address" ;;
  *) die "usage: kafka.sh fetch | start DIR [KEY=VALUE...] | stop DIR [--kill] | topic DIR NAME PARTITIONS [KEY=VALUE...] | address DIR | version" ;;
esac
