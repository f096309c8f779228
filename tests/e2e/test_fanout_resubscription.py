"""A subscription lasts 5 minutes: the FANOUT daemon re-subscribes and keeps reading (about 6 minutes).

Not in ``make test`` (it waits out the 5 minutes): run it with ``FLEET_FANOUT_RESUBSCRIBE=1 .venv/bin/python
-m pytest tests/e2e/test_fanout_resubscription.py``. Half of a fixture stream is put before the daemon's
first subscriptions, the other half once they have expired on kinesis-local; the second half must reach
``vehicle-state`` and be checkpointed through new subscriptions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from devtools.kinesis_local import KinesisLocal
from devtools.local_aws import LocalAws
from processors.pseudonymize import Pseudonymizer
from processors.vehicle_state import named_item
from schemas.dynamo import from_item
from tests.conftest import AwsEnv, fresh_env
from tests.e2e.test_fanout import CONSUMER, FANOUT_ENV, STREAM, kinesis_calls, wait_until_active
from tests.support.oracle import latest_by_vin
from worker.leases import lease_checkpoints
from worker.replay import read_fixture, replay

pytestmark = [
    pytest.mark.skipif(
        not os.environ.get("FLEET_FANOUT_RESUBSCRIBE"),
        reason="waits out kinesis-local's 5-minute subscriptions: FLEET_FANOUT_RESUBSCRIBE=1 runs it",
    ),
    pytest.mark.timeout(600),  # the suite's 300 s is less than one subscription
]

SUBSCRIPTION_SECONDS = 300
"""How long a SubscribeToShard call delivers, on AWS and on kinesis-local alike."""


def vehicle_state(env: AwsEnv) -> dict[str, dict[str, object]]:
    items = env.clients.dynamodb.scan(TableName=env.settings.table_names["vehicle-state"])["Items"]
    return {item["pseudoVin"]: named_item(item) for item in map(from_item, items)}


def test_records_put_after_the_first_subscriptions_expired_arrive_through_new_ones(
    local_aws: LocalAws, tmp_path: Path
) -> None:
    log = tmp_path / "kinesis-local.log"
    entries = list(read_fixture(STREAM))
    first, second = entries[: len(entries) // 2], entries[len(entries) // 2 :]
    with KinesisLocal(log, log_level="DEBUG") as kinesis:
        env = fresh_env(local_aws, {**FANOUT_ENV, "AWS_ENDPOINT_URL_KINESIS": kinesis.endpoint})
        stream_arn = env.clients.kinesis.describe_stream_summary(StreamName=env.settings.stream_name)[
            "StreamDescriptionSummary"
        ]["StreamARN"]
        arn = env.clients.kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName=CONSUMER)[
            "Consumer"
        ]["ConsumerARN"]
        wait_until_active(env, arn)
        env = env.with_settings(FLEET_KCL_CONSUMER_ARN=arn)
        replay(env.clients.kinesis, env.settings.stream_name, first)
        stderr = (tmp_path / "worker.log").open("w")  # a file: a pipe nobody reads for 6 minutes fills
        daemon = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"],
            env=env.environ,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + 120
            while not any(c.operation == "SubscribeToShard" for c in kinesis_calls(log.read_text())):
                assert time.monotonic() < deadline, "no subscription within 2 minutes"
                time.sleep(1)
            time.sleep(SUBSCRIPTION_SECONDS + 15)  # every first subscription has ended by now
            last = replay(env.clients.kinesis, env.settings.stream_name, second).last_sequence
            expected = latest_by_vin(STREAM)
            pseudo = Pseudonymizer(FANOUT_ENV["FLEET_PSEUDONYM_KEY"].encode())
            deadline = time.monotonic() + 60
            while True:
                state = vehicle_state(env)
                if all(
                    state.get(pseudo.pseudo_vin(vin), {}).get("timestamp") == latest["timestamp"]
                    for vin, latest in expected.items()
                ):
                    break
                assert time.monotonic() < deadline, "the second half did not reach vehicle-state"
                time.sleep(2)
            # ... and is checkpointed, once the trip machine has consumed it (L of the shard's clock).
            while not all(
                int(lease_checkpoints(env.settings, env.clients).get(shard) or 0) >= int(sequence)
                for shard, sequence in last.items()
            ):
                assert time.monotonic() < deadline + 60, "the second half was not checkpointed"
                time.sleep(2)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=120)
            stderr.close()
        assert daemon.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
        subscribed = Counter(c.operation for c in kinesis_calls(log.read_text()))["SubscribeToShard"]
        print(f"SubscribeToShard calls served over the run: {subscribed}")
        assert subscribed >= 4, "each of the 2 shards subscribed again after 5 minutes"
