"""The peer baseline: the same no-op workload through Celery, with the same RabbitMQ broker and
Redis result backend as the service, acks_late on and publisher confirms on.

Worker:  celery -A celery_bench worker -P prefork|threads -c N -Q $BENCH_QUEUE ...
Client:  python celery_bench.py submit TASKS THREADS
         submits TASKS no-op tasks with apply_async from THREADS threads, collects every result
         from the backend (MGET of the result keys), and prints one JSON line:
         {"tasks": n, "seconds": s, "tasks_per_second": r}, where s runs from the first submit
         to the latest `date_done` the backend recorded.

Configuration from the environment: BENCH_AMQP_URL, BENCH_REDIS_URL, BENCH_QUEUE (a classic
v2 queue, like the service's), BENCH_PREFIX (prefix of every result key, so the benchmark can
delete them afterwards).
"""

import json
import os
import sys
import threading
import time
from datetime import datetime, timezone

from celery import Celery
from kombu import Queue

QUEUE = os.environ.get("BENCH_QUEUE", "bench-celery")
PREFIX = os.environ.get("BENCH_PREFIX", "bench-celery-")

app = Celery(
    "celery_bench",
    broker=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
)
app.conf.update(
    task_acks_late=True,
    task_default_queue=QUEUE,
    task_queues=[Queue(QUEUE, routing_key=QUEUE, queue_arguments={"x-queue-version": 2})],
    broker_transport_options={"confirm_publish": True},
    result_backend_transport_options={"global_keyprefix": PREFIX},
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop():
    return None


def parse_done(value):
    done = datetime.fromisoformat(value)
    if done.tzinfo is None:
        done = done.replace(tzinfo=timezone.utc)
    return done


def submit(tasks, threads):
    ids = [[] for _ in range(threads)]

    def producer(k):
        for _ in range(k, tasks, threads):
            ids[k].append(noop.apply_async().id)

    started = datetime.now(timezone.utc)
    workers = [threading.Thread(target=producer, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    pending = [app.backend.get_key_for_task(i) for chunk in ids for i in chunk]
    client = app.backend.client
    latest = started
    deadline = time.monotonic() + 300
    while pending and time.monotonic() < deadline:
        still = []
        for at in range(0, len(pending), 500):
            batch = pending[at:at + 500]
            for key, raw in zip(batch, client.mget(batch)):
                if raw is None:
                    still.append(key)
                    continue
                meta = json.loads(raw)
                if meta.get("status") != "SUCCESS":
                    raise SystemExit(f"task failed: {meta}")
                latest = max(latest, parse_done(meta["date_done"]))
        pending = still
        if pending:
            time.sleep(0.02)
    if pending:
        raise SystemExit(f"{len(pending)} tasks unfinished")
    seconds = (latest - started).total_seconds()
    print(json.dumps({"tasks": tasks, "seconds": seconds, "tasks_per_second": tasks / seconds}))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "submit":
        raise SystemExit(__doc__)
    submit(int(sys.argv[2]), int(sys.argv[3]))
