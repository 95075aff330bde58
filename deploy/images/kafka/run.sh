# Formats the broker's storage on first start, then runs it. Environment: KAFKA_ADVERTISED (the
# host:port clients are told, e.g. kafka.kiln-infra.svc:9092), KAFKA_DATA (/var/lib/kafka/data).
set -euf  # -f: the class path below ends in a wildcard Java expands, not the shell
data=${KAFKA_DATA:-/var/lib/kafka/data}
conf=/var/lib/kafka/server.properties
mkdir -p "$data"
cat >"$conf" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:9093
listeners=PLAINTEXT://0.0.0.0:9092,CONTROLLER://127.0.0.1:9093
advertised.listeners=PLAINTEXT://${KAFKA_ADVERTISED:?}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$data
auto.create.topics.enable=false
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.coordinator.append.linger.ms=0
PROPS
java="java -Xms192m -Xmx512m -XX:+UseG1GC -Dlog4j2.configurationFile=/opt/kafka/log4j2.properties -cp /opt/kafka/libs/*"
if [ ! -f "$data/meta.properties" ]; then
  $java kafka.tools.StorageTool format -t "$($java kafka.tools.StorageTool random-uuid)" -c "$conf"
fi
exec $java kafka.Kafka "$conf"
