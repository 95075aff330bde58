#!/usr/bin/env bash
# Runs a real Apache Kafka broker in KRaft mode on loopback, from jars fetched from Maven Central.
#   kafka.sh start|stop|status|restart|jars
# Settings (environment): KILN_KAFKA_PORT (9092), KILN_KAFKA_CONTROLLER_PORT (9093),
# KILN_KAFKA_INSTANCE (main; a second instance keeps its own data, as the fault tests need),
# KILN_KAFKA_BOOTSTRAP (set it to use an existing cluster instead: nothing is started),
# KILN_TOPIC_PREFIX (kiln.; the ACLs name Kiln's topics under it).
# The broker requires authentication: each service has a SCRAM-SHA-512 user of its own, allowed only
# what deploy/local/kafka-acls.txt lists; "admin" is the superuser the scripts and tests use.
# Passwords are made once, into .state/secrets/kafka-<user> (readable by root only).
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
USERS=(admin gateway resolver builder launcher analytics)
ACLS="$KILN_ROOT/deploy/local/kafka-acls.txt"
PREFIX=${KILN_TOPIC_PREFIX:-kiln.}

password() { secret "kafka-$1"; }  # password USER: made once, kept in .state/secrets/kafka-USER

# client_config FILE MECHANISM: an admin client's properties (SCRAM for the broker, PLAIN for the controller).
client_config() {
  local module=scram.ScramLoginModule; [[ $2 == PLAIN ]] && module=plain.PlainLoginModule
  rm -f "$1"
  (umask 077; cat >"$1" <<PROPS
security.protocol=SASL_PLAINTEXT
sasl.mechanism=$2
sasl.jaas.config=org.apache.kafka.common.security.$module required username="admin" password="$(password admin)";
PROPS
  )
}

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

JAVA=(java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true
  -Dlog4j2.configurationFile="$POM_DIR/log4j2.properties" -cp "$LIBS/*")

start() {
  if [[ -n ${KILN_KAFKA_BOOTSTRAP:-} ]]; then ok "kafka: using the existing cluster at $KILN_KAFKA_BOOTSTRAP"; return; fi
  # Files of an older install may be readable by all; they hold the admin's password and the log.
  [[ -d $HOME_DIR ]] && chmod -R go-rwx "$HOME_DIR"
  local config_sha; config_sha=$( (cat "$POM_DIR/server.properties.in"; echo "$PORT $CONTROLLER_PORT") | sha256sum | cut -d' ' -f1)
  if pid_alive "$PIDFILE" && [[ $(cat "$HOME_DIR/.config-sha" 2>/dev/null) != "$config_sha" ]]; then
    warn "Kafka ($INSTANCE) runs with an older configuration: restarting it"; stop
  fi
  if pid_alive "$PIDFILE" && port_open 127.0.0.1 "$PORT"; then
    ensure_users; ensure_acls
    ok "kafka ($INSTANCE) already running on 127.0.0.1:$PORT"; return
  fi
  java_ok
  for p in "$PORT" "$CONTROLLER_PORT"; do
    port_open 127.0.0.1 "$p" && die "port $p is already in use by another program, so Kafka cannot listen there" \
      "stop that program (ss -ltnp 'sport = :$p' shows it), or set KILN_KAFKA_PORT / KILN_KAFKA_CONTROLLER_PORT"
  done
  fetch_jars
  mkdir -p "$HOME_DIR/data"
  rm -f "$HOME_DIR/server.properties"  # umask applies to new files only: an older one may be readable by all
  chmod 700 "$HOME_DIR" "$HOME_DIR/data"
  (umask 077; sed -e "s|@PORT@|$PORT|g" -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" -e "s|@DATA_DIR@|$HOME_DIR/data|g" \
    -e "s|@ADMIN_PASSWORD@|$(password admin)|g" "$POM_DIR/server.properties.in" >"$HOME_DIR/server.properties")
  client_config "$HOME_DIR/admin.properties" SCRAM-SHA-512
  client_config "$HOME_DIR/admin-plain.properties" PLAIN
  if [[ ! -f $HOME_DIR/data/meta.properties ]]; then
    step "formatting Kafka storage ($INSTANCE)"
    local id; id=$("${JAVA[@]}" kafka.tools.StorageTool random-uuid)
    "${JAVA[@]}" kafka.tools.StorageTool format -t "$id" -c "$HOME_DIR/server.properties" >>"$LOG" 2>&1 \
      || die "formatting Kafka's storage failed (see $LOG)" "remove $HOME_DIR and run make up again"
  fi
  step "starting Kafka ($INSTANCE) on 127.0.0.1:$PORT"
  : >"$LOG.run"
  setsid nohup "${JAVA[@]}" kafka.Kafka "$HOME_DIR/server.properties" >"$LOG.run" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  echo "$config_sha" >"$HOME_DIR/.config-sha"
  if ! wait_for "kafka" 90 grep -q "Kafka Server started" "$LOG.run"; then
    tail -n 20 "$LOG.run" >&2
    die "Kafka did not become ready within 90 s (log: $LOG.run)" "read the log above; 'make down' then 'make up' retries"
  fi
  wait_for "kafka port" 10 port_open 127.0.0.1 "$PORT" || die "Kafka started but does not accept connections on $PORT" "see $LOG.run"
  ensure_users
  ensure_acls
  ok "kafka ($INSTANCE) ready on 127.0.0.1:$PORT (SASL/SCRAM, per-service ACLs)"
}

# ensure_users: a SCRAM credential for each user, made by the admin over PLAIN (its static account),
# so that it works on storage formatted before authentication was on too. Done again only when a
# password changes.
ensure_users() {
  local want u stamp="$HOME_DIR/.users-sha"
  want=$(for u in "${USERS[@]}"; do echo "$u $(password "$u")"; done | sha256sum | cut -d' ' -f1)
  [[ -f $stamp && $(cat "$stamp") == "$want" ]] && return 0
  step "creating Kafka users (${USERS[*]})"
  # ConfigCommand repeats its arguments, password included, when it fails: its output is redacted
  # before it reaches the log. (Its --add-config-file does not take SCRAM credentials.)
  local pw out
  for u in "${USERS[@]}"; do
    pw=$(password "$u")
    out=$("${JAVA[@]}" kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$PORT" \
      --command-config "$HOME_DIR/admin-plain.properties" --alter --entity-type users --entity-name "$u" \
      --add-config "SCRAM-SHA-512=[password=$pw]" 2>&1) \
      || { echo "${out//$pw/<redacted>}" >>"$LOG"; die "creating the Kafka user $u failed (see $LOG)" "read the log; 'make down' then 'make up' retries"; }
    echo "${out//$pw/<redacted>}" >>"$LOG"
  done
  echo "$want" >"$stamp"
}

# ensure_acls: every line of kafka-acls.txt, with the topic prefix filled in. Done again only when the
# file or the prefix changes. ACLs are added, never removed here: a line taken out of the file stays
# until removed by hand (AclCommand --remove) or with the broker's data.
ensure_acls() {
  local want stamp="$HOME_DIR/.acls-sha" user ops type pattern name principals op args
  want=$( (cat "$ACLS"; echo "$PREFIX") | sha256sum | cut -d' ' -f1)
  [[ -f $stamp && $(cat "$stamp") == "$want" ]] && return 0
  step "setting Kafka ACLs (deploy/local/kafka-acls.txt)"
  while read -r user ops type pattern name; do
    [[ -z $user || $user == \#* ]] && continue
    principals=()
    if [[ $user == "*" ]]; then
      for u in "${USERS[@]:1}"; do principals+=(--allow-principal "User:$u"); done
    else principals=(--allow-principal "User:$user"); fi
    args=()
    for op in ${ops//,/ }; do args+=(--operation "$op"); done
    "${JAVA[@]}" org.apache.kafka.tools.AclCommand --bootstrap-server "127.0.0.1:$PORT" \
      --command-config "$HOME_DIR/admin.properties" --add --force "${principals[@]}" "${args[@]}" \
      "--$type" "${name//@P@/$PREFIX}" --resource-pattern-type "$pattern" >>"$LOG" 2>&1 \
      || die "setting the Kafka ACL '$user $ops $type $name' failed (see $LOG)" "check deploy/local/kafka-acls.txt"
  done <"$ACLS"
  echo "$want" >"$stamp"
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
  jars) fetch_jars; echo "$LIBS" ;;  # the broker's jars, fetched if need be (deploy/k8s builds an image of them)
  *) echo "usage: $0 start|stop|status|restart|jars" >&2; exit 2 ;;
esac
