#!/usr/bin/env bash
# Runs a real Apache Kafka broker in KRaft mode on loopback, from jars fetched from Maven Central.
#   kafka.sh start|stop|status|restart
# Settings (environment): KILN_KAFKA_PORT (9092), KILN_KAFKA_CONTROLLER_PORT (9093),
# KILN_KAFKA_INSTANCE (main; a second instance keeps its own data, as the fault tests need),
# KILN_KAFKA_BOOTSTRAP (set it to use an existing cluster instead: nothing is started).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

PORT=${KILN_KAFKA_PORT:-9092}
CONTROLLER_PORT=${KILN_KAFKA_CONTROLLER_PORT:-9093}
INSTANCE=${KILN_KAFKA_INSTANCE:-main}
LIBS="$KILN_STATE/kafka/libs"
HOME_DIR="$KILN_STATE/kafka/$INSTANCE"
PIDFILE="$HOME_DIR/kafka.pid"
LOG="$KILN_LOGS/kafka-$INSTANCE.log"
POM_DIR="$KILN_ROOT/deploy/kafka"

fetch_jars() {
  # The stamp records which pom produced the jars, so a changed pom fetches again.
  local stamp="$LIBS/.pom-sha" want
  want=$(sha256sum "$POM_DIR/pom.xml" | cut -d' ' -f1)
  [[ -f $stamp && $(cat "$stamp") == "$want" ]] && return 0
  command -v mvn >/dev/null || die "Maven (mvn) is not installed; it fetches the Kafka jars" "apt-get install maven"
  step "fetching the Kafka broker jars from Maven Central"
  rm -rf "$LIBS"; mkdir -p "$LIBS"
  (cd "$POM_DIR" && mvn -q -B package -Dlibs.dir="$LIBS") >"$KILN_LOGS/kafka-fetch.log" 2>&1 \
    || die "Maven could not fetch the Kafka jars (see $KILN_LOGS/kafka-fetch.log)" "check that Maven Central is reachable, then run make up again"
  rm -rf "$POM_DIR/target"
  echo "$want" >"$stamp"
}

java_ok() {
  command -v java >/dev/null || die "Java is not installed; the Kafka broker runs on Java 17 or newer" "apt-get install openjdk-17-jre-headless"
  local v
  v=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/.*java.specification.version = //p')
  ((${v%%.*} >= 17)) || die "Java $v is too old for Kafka 4 (needs 17 or newer)" "install openjdk-17-jre-headless and put it first on PATH"
}

start() {
  if [[ -n ${KILN_KAFKA_BOOTSTRAP:-} ]]; then ok "kafka: using the existing cluster at $KILN_KAFKA_BOOTSTRAP"; return; fi
  if pid_alive "$PIDFILE" && port_open 127.0.0.1 "$PORT"; then ok "kafka ($INSTANCE) already running on 127.0.0.1:$PORT"; return; fi
  java_ok
  for p in "$PORT" "$CONTROLLER_PORT"; do
    port_open 127.0.0.1 "$p" && die "port $p is already in use by another program, so Kafka cannot listen there" \
      "stop that program (ss -ltnp 'sport = :$p' shows it), or set KILN_KAFKA_PORT / KILN_KAFKA_CONTROLLER_PORT"
  done
  fetch_jars
  mkdir -p "$HOME_DIR/data"
  sed -e "s|@PORT@|$PORT|g" -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" -e "s|@DATA_DIR@|$HOME_DIR/data|g" \
    "$POM_DIR/server.properties.in" >"$HOME_DIR/server.properties"
  local java=(java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$POM_DIR/log4j2.properties" -cp "$LIBS/*")
  if [[ ! -f $HOME_DIR/data/meta.properties ]]; then
    step "formatting Kafka storage ($INSTANCE)"
    local id; id=$("${java[@]}" kafka.tools.StorageTool random-uuid)
    "${java[@]}" kafka.tools.StorageTool format -t "$id" -c "$HOME_DIR/server.properties" >>"$LOG" 2>&1 \
      || die "formatting Kafka's storage failed (see $LOG)" "remove $HOME_DIR and run make up again"
  fi
  step "starting Kafka ($INSTANCE) on 127.0.0.1:$PORT"
  : >"$LOG.run"
  setsid nohup "${java[@]}" kafka.Kafka "$HOME_DIR/server.properties" >"$LOG.run" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  if ! wait_for "kafka" 90 grep -q "Kafka Server started" "$LOG.run"; then
    tail -n 20 "$LOG.run" >&2
    die "Kafka did not become ready within 90 s (log: $LOG.run)" "read the log above; 'make down' then 'make up' retries"
  fi
  wait_for "kafka port" 10 port_open 127.0.0.1 "$PORT" || die "Kafka started but does not accept connections on $PORT" "see $LOG.run"
  ok "kafka ($INSTANCE) ready on 127.0.0.1:$PORT"
}

stop() {
  if ! pid_alive "$PIDFILE"; then rm -f "$PIDFILE"; return; fi
  local pid; pid=$(cat "$PIDFILE")
  kill -TERM "$pid"
  # A clean shutdown lets the next start skip log recovery; give it time, then insist.
  wait_for "kafka exit" 30 bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  ok "kafka ($INSTANCE) stopped"
}

status() {
  if [[ -n ${KILN_KAFKA_BOOTSTRAP:-} ]]; then echo "kafka      external  $KILN_KAFKA_BOOTSTRAP"; return; fi
  if pid_alive "$PIDFILE" && port_open 127.0.0.1 "$PORT"; then echo "kafka      running   127.0.0.1:$PORT"; else echo "kafka      stopped   127.0.0.1:$PORT"; fi
}

case "${1:-}" in
  start) start ;; stop) stop ;; status) status ;; restart) stop; start ;;
  *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac
