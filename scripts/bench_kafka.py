"""`scripts/bench kafka`: NDJSON → Kafka and Kafka → Parquet, Tributary beside the peers.

Peers, on the same data and the same broker (tansu on loopback, memory storage):
- produce: the confluent-kafka Python producer (the same librdkafka; what a user would write:
  read the file, produce each line, idempotent, zstd, linger 5 ms), and the broker's own load
  generator (`tansu perf produce`, 100-byte records in batches of 1000) as the ceiling;
- consume: a confluent-kafka Python consumer that parses the JSON and writes one zstd Parquet
  file with pyarrow.
Tributary: `tributary run` with the NDJSON source and the Kafka sink (parses and re-encodes every
record), and with the Kafka source (stop_at_end) and the Parquet sink.

Produce runs in KAFKA_ROUNDS rounds (default 4): each round runs the ceiling, the Python producer
and Tributary back to back, in reverse order every other round (the broker slows as it fills up),
and the ratios are the medians of the rounds' own ratios. Consume runs once, from the last round's
topic.

Every output is checked: the number of records and the sum of their ids, read back with a plain
consumer (topics) or pyarrow (Parquet). A run that does not match does not count.

usage: bench_kafka.py ROOT BENCH_DIR RECORDS  (TRIBUTARY_KAFKA_BROKERS, TANSU set)
"""

import json
import os
import random
import statistics
import subprocess
import sys
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from bench_common import write_section
import pyarrow as pa
import pyarrow.parquet as pq

ROOT, B, N = sys.argv[1], sys.argv[2], int(sys.argv[3])
ROUNDS = int(os.environ.get("KAFKA_ROUNDS", "4"))
# As long as the producers run (10M records take Tributary ~13 s): 5 s runs swung 464k-1.02M/s
# between rounds of one bench.
CEILING_SECONDS = 15
BROKERS = os.environ["TRIBUTARY_KAFKA_BROKERS"]
TANSU = os.environ["TANSU"]
TRIBUTARY = os.path.join(ROOT, "target/release/tributary")
PARTITIONS = 3
RUN = f"{os.getpid()}-{int(time.time())}"
work = os.path.join(B, "kafka")
os.makedirs(work, exist_ok=True)


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


def generate(path, n):
    if os.path.exists(path) and open(path + ".rows").read() == str(n):
        return
    log(f"generating {n} events into {path}")
    rnd = random.Random(7)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({
                "id": i, "device": f"dev-{i % 500}", "site": f"s{i % 7}",
                "temp": round(rnd.uniform(-10, 40), 2), "ok": i % 13 != 0,
                "ts": f"2026-12-01T10:{(i // 60) % 60:02d}:{i % 60:02d}Z",
            }, separators=(",", ":")) + "\n")
    open(path + ".rows", "w").write(str(n))


def create(topic, partitions=PARTITIONS):
    admin = AdminClient({"bootstrap.servers": BROKERS})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result()
    deadline = time.time() + 30
    while time.time() < deadline:
        md = admin.list_topics(topic, timeout=5).topics.get(topic)
        if md is not None and md.error is None and len(md.partitions) == partitions:
            return
        time.sleep(0.1)
    raise SystemExit(f"topic {topic} did not appear")


def read_topic(topic, partitions=PARTITIONS):
    """(count, sum of ids): every message to the end of every partition."""
    c = Consumer({"bootstrap.servers": BROKERS, "group.id": f"bench-check-{RUN}-{topic}",
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    done, count, total = set(), 0, 0
    while len(done) < partitions:
        for m in c.consume(10000, timeout=1.0):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    done.add(m.partition())
                    continue
                raise SystemExit(f"reading {topic}: {m.error()}")
            done.discard(m.partition())
            count += 1
            total += json.loads(m.value())["id"]
    c.close()
    return count, total


def timed(cmd, **kw):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, **kw)
    return time.perf_counter() - t


def python_produce(path, topic):
    t = time.perf_counter()
    p = Producer({"bootstrap.servers": BROKERS, "enable.idempotence": True, "acks": "all",
                  "compression.codec": "zstd", "linger.ms": 5})
    with open(path, "rb") as f:
        for line in f:
            key = line[line.index(b'"device":"') + 10:].split(b'"', 1)[0]
            while True:
                try:
                    p.produce(topic, line.rstrip(b"\n"), key)
                    break
                except BufferError:
                    p.poll(0.01)
            p.poll(0)
    p.flush()
    return time.perf_counter() - t


def python_consume(topic, out):
    t = time.perf_counter()
    c = Consumer({"bootstrap.servers": BROKERS, "group.id": f"bench-py-{RUN}",
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    rows, done = [], set()
    while len(done) < PARTITIONS:
        for m in c.consume(10000, timeout=1.0):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    done.add(m.partition())
                    continue
                raise SystemExit(f"consuming {topic}: {m.error()}")
            done.discard(m.partition())
            rows.append(json.loads(m.value()))
    c.close()
    pq.write_table(pa.Table.from_pylist(rows), out, compression="zstd")
    return time.perf_counter() - t


def parquet_check(path):
    """(count, sum of ids) of a Parquet file or of every Parquet file under a folder."""
    files = [path] if os.path.isfile(path) else []
    for d, _, fs in os.walk(path):
        files += [os.path.join(d, f) for f in fs if f.endswith(".parquet")]
    ids = [pq.read_table(f, columns=["id"]).column("id").to_pylist() for f in files]
    flat = [i for part in ids for i in part]
    return len(flat), sum(flat)


def drop(topics):
    """Deletes topics of an earlier round (tansu keeps them in memory); failures are ignored."""
    admin = AdminClient({"bootstrap.servers": BROKERS})
    for f in admin.delete_topics(topics).values():
        try:
            f.result()
        except Exception as e:  # noqa: BLE001 - a topic left behind only costs memory
            log(f"could not delete a topic: {e}")


def tansu_ceiling(seconds):
    topic = f"bench-ceiling-{RUN}"
    create(topic, 1)
    subprocess.run([TANSU, "perf", "--broker", f"tcp://{BROKERS}", topic, "produce",
                    "--batch-size", "1000", "--record-size", "100", "--duration", f"{seconds}s"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    c = Consumer({"bootstrap.servers": BROKERS, "group.id": f"bench-ceiling-{RUN}"})
    # ListOffsets on tansu is short by the newest record batch (at most 1000 records here).
    _, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    c.close()
    drop([topic])
    return high / seconds


data = os.path.join(B, "data", f"kafka_events_{N}.ndjson")
os.makedirs(os.path.dirname(data), exist_ok=True)
generate(data, N)
expected = (N, N * (N - 1) // 2)
results = []

# Produce in rounds, each running the ceiling, the Python producer and Tributary back to back:
# the host's speed drifts by tens of percent between minutes, so only a round's own runs are
# compared (median of the per-round ratios). tansu (memory storage) slows as it holds more
# records, even after topics are dropped, so the order flips every round: odd rounds run
# ceiling, Python, Tributary; even rounds Tributary, Python, ceiling. Use an even KAFKA_ROUNDS.


def tributary_produce(rnd):
    log(f"round {rnd}: tributary, {N} records")
    topic = f"bench-tributary-{RUN}-{rnd}"
    create(topic)
    d = os.path.join(work, "produce")
    os.makedirs(d, exist_ok=True)
    subprocess.run(["rm", "-rf", os.path.join(d, ".tributary")], check=True)
    open(os.path.join(d, "produce.yaml"), "w").write(f"""pipeline: bench_kafka_produce
source: {{ kind: json, path: {data} }}
sink: {{ kind: kafka, brokers: {BROKERS}, topic: {topic}, key: [device] }}
""")
    seconds = timed([TRIBUTARY, "run", "produce.yaml", "--no-progress", "--log", "warn"], cwd=d)
    assert read_topic(topic) == expected, "tributary's topic does not match the input"
    return topic, seconds


def python_round(rnd):
    log(f"round {rnd}: confluent-kafka Python, {N} records")
    topic = f"bench-py-{RUN}-{rnd}"
    create(topic)
    seconds = python_produce(data, topic)
    assert read_topic(topic) == expected, "the Python producer's topic does not match the input"
    return topic, seconds


def ceiling_round(rnd):
    log(f"round {rnd}: ceiling (tansu perf produce, {CEILING_SECONDS} s)")
    return tansu_ceiling(CEILING_SECONDS)


rounds = []
for rnd in range(1, ROUNDS + 1):
    log(f"round {rnd} of {ROUNDS}")
    if rnd % 2:
        ceiling = ceiling_round(rnd)
        py_topic, py_produce = python_round(rnd)
        tr_topic, tr_produce = tributary_produce(rnd)
    else:
        tr_topic, tr_produce = tributary_produce(rnd)
        py_topic, py_produce = python_round(rnd)
        ceiling = ceiling_round(rnd)
    rounds.append((ceiling, py_produce, tr_produce))
    log(f"round {rnd}: ceiling {ceiling:,.0f}/s, python {N / py_produce:,.0f}/s, "
        f"tributary {N / tr_produce:,.0f}/s")
    if rnd < ROUNDS:
        drop([py_topic, tr_topic])

median = statistics.median
ceiling = median(r[0] for r in rounds)
py_produce = median(r[1] for r in rounds)
tr_produce = median(r[2] for r in rounds)
vs_ceiling = median(N / r[2] / r[0] for r in rounds)
vs_python = median(r[1] / r[2] for r in rounds)

log("consume floor: a plain Rust consumer (librdkafka) reading every message, nothing else")
tail = os.path.join(ROOT, "target/release/examples/kafka_bench_tail")
floor_consume = timed([tail, "read", BROKERS, tr_topic, str(PARTITIONS), str(N)],
                      stdout=subprocess.DEVNULL)

log("consume: confluent-kafka Python → pyarrow Parquet")
py_out = os.path.join(work, "py.parquet")
py_consume = python_consume(tr_topic, py_out)
assert parquet_check(py_out) == expected, "the Python consumer's Parquet does not match"

log("consume: tributary Kafka → Parquet")
d = os.path.join(work, "consume")
subprocess.run(["rm", "-rf", d], check=True)
os.makedirs(d)
open(os.path.join(d, "consume.yaml"), "w").write(f"""pipeline: bench_kafka_consume
source: {{ kind: kafka, brokers: {BROKERS}, topics: [{tr_topic}], group: bench-tr-{RUN}, stop_at_end: true }}
sink: {{ kind: parquet, path: out }}
""")
tr_consume = timed([TRIBUTARY, "run", "consume.yaml", "--no-progress", "--log", "warn"], cwd=d)
assert parquet_check(os.path.join(d, "out")) == expected, "tributary's Parquet does not match"

rate = lambda s: N / s
lines = [
    "## Kafka: NDJSON → Kafka and Kafka → Parquet", "",
    f"Command: `KAFKA_RECORDS={N} KAFKA_ROUNDS={ROUNDS} scripts/bench kafka` (2 cores; tansu 0.6, memory "
    f"storage, on loopback; 3 partitions; ~110-byte JSON events). Produce: {ROUNDS} rounds, each running the "
    "ceiling, the Python producer and Tributary back to back, in reverse order every other round (tansu slows "
    "as it fills up); rates are the medians of the rounds, ratios the "
    "medians of the per-round ratios (the host's speed drifts by tens of percent between minutes). Consume: one "
    "run. Tributary produces with the NDJSON source (parsing and "
    "re-encoding every record) and the Kafka sink (key `device`, idempotent, acks=all, zstd, linger 5 ms), and "
    "consumes with the Kafka source to zstd Parquet. The Python peers use confluent-kafka (the same librdkafka) "
    "as a user would: the producer sends each line as it is (no parsing) with the same settings; the consumer "
    "parses each message and writes one Parquet file with pyarrow. The ceiling is `tansu perf produce` "
    f"(100-byte records, batches of 1000, {CEILING_SECONDS} s, no compression; its rate from the topic's end offset); the consume floor is "
    "`kafka_bench_tail read` (crates/kafka/examples), a plain librdkafka consumer that only reads. Both the broker "
    "and the clients share the 2 cores: the rates include the broker's own work. Every output was checked "
    "(count and sum of ids).", "",
    "| direction | tool | records | seconds | records/s | Tributary vs it |",
    "|---|---|---|---|---|---|",
    f"| produce | tansu perf (ceiling) | | | {ceiling:,.0f} | {vs_ceiling:.2f}× |",
    f"| produce | confluent-kafka Python | {N:,} | {py_produce:.2f} | {rate(py_produce):,.0f} | {vs_python:.2f}× |",
    f"| produce | tributary | {N:,} | {tr_produce:.2f} | {rate(tr_produce):,.0f} | |",
    f"| consume | plain librdkafka consumer (floor) | {N:,} | {floor_consume:.2f} | {rate(floor_consume):,.0f} | {floor_consume / tr_consume:.2f}× |",
    f"| consume → Parquet | confluent-kafka Python + pyarrow | {N:,} | {py_consume:.2f} | {rate(py_consume):,.0f} | {py_consume / tr_consume:.2f}× |",
    f"| consume → Parquet | tributary | {N:,} | {tr_consume:.2f} | {rate(tr_consume):,.0f} | |",
]
section = "\n".join(lines) + "\n"
write_section(ROOT, "Kafka: NDJSON → Kafka", section)
