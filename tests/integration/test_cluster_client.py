"""What redis-py's RedisCluster clients (sync and asyncio) do with the calls the data layer makes, on
a real cluster (services.start_cluster): scripts over hash-tagged keys, pipelines across nodes,
same-slot transactions, WAIT, sharded and plain pub/sub. These pin down the answers written up in
docs/cluster-findings.md; a redis-py upgrade that changes one of them fails here."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import redis.asyncio.cluster as async_cluster
from redis.cluster import RedisCluster
from redis.exceptions import CrossSlotTransactionError, NoScriptError, RedisClusterException

from tests.integration.services import Cluster, start_cluster, wait_until

pytestmark = pytest.mark.cluster

# Two keys of one collection: one slot (the hash tag), different names.
IMAGES, VECTORS = "ss:c:{pets:3}:images", "ss:c:{pets:3}:vectors"
SET_BOTH = "redis.call('SET', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[1]); return #KEYS"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # A long node timeout: a replica stopped for a second below is not declared failed.
    started = start_cluster(tmp_path_factory.mktemp("cluster"), node_timeout_ms=5000)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def client(cluster: Cluster) -> Iterator[RedisCluster]:
    with RedisCluster.from_url(cluster.url, decode_responses=True) as c:
        yield c


def other_slot_keys(cluster: Cluster, count: int) -> list[str]:
    """`count` keys whose primaries cover every primary (so a pipeline of them spans all nodes)."""
    keys = [f"spread:{i}" for i in range(count)]
    assert len({cluster.primary_for_key(k) for k in keys}) == len(cluster.primaries())
    return keys


@contextmanager
def replica_stopped(cluster: Cluster, primary: int) -> Iterator[None]:
    """The replica of `primary` frozen (SIGSTOP): it acknowledges nothing until it is let go."""
    pid = cluster.nodes[cluster.replica_of(primary)].proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_script_runs_over_hash_tagged_keys_of_one_slot(cluster: Cluster, client: RedisCluster) -> None:
    assert client.keyslot(IMAGES) == client.keyslot(VECTORS)
    script = client.register_script(SET_BOTH)
    assert script(keys=[IMAGES, VECTORS], args=["s"]) == 2  # NOSCRIPT handled: loaded, then run
    assert client.mget(IMAGES, VECTORS) == ["s", "s"]  # MGET of one slot is fine too
    with pytest.raises(RedisClusterException, match="all keys must map to the same key slot"):
        script(keys=["a", "b"], args=["x"])  # refused by the client, nothing sent

    async def in_asyncio() -> None:
        async with async_cluster.RedisCluster.from_url(cluster.url, decode_responses=True) as aclient:
            ascript = aclient.register_script(SET_BOTH)
            assert await ascript(keys=[IMAGES, VECTORS], args=["a"]) == 2
            with pytest.raises(RedisClusterException, match="same key slot"):
                await ascript(keys=["a", "b"], args=["x"])

    asyncio.run(in_asyncio())
    assert client.get(VECTORS) == "a"


def test_a_pipeline_across_nodes_replies_in_the_order_queued(cluster: Cluster, client: RedisCluster) -> None:
    keys = other_slot_keys(cluster, 12)
    pipe = client.pipeline(transaction=False)
    for i, key in enumerate(keys):
        pipe.set(key, i)
    for key in reversed(keys):
        pipe.get(key)
    pipe.incr(keys[0]).get(keys[0])
    assert pipe.execute() == [True] * 12 + [str(i) for i in reversed(range(12))] + [1, "1"]

    # Scripts in a cluster pipeline: Script(client=pipe) and pipe.evalsha() are refused by
    # redis-py; a raw EVALSHA (or EVAL) through execute_command goes, without NOSCRIPT handling.
    script = client.register_script(SET_BOTH)
    with pytest.raises(RedisClusterException, match="evalsha is blocked"):
        script(keys=[IMAGES, VECTORS], args=["p"], client=client.pipeline())
    client.script_flush()  # every primary
    pipe = client.pipeline().execute_command("EVALSHA", script.sha, 2, IMAGES, VECTORS, "p").get(keys[1])
    noscript, value = pipe.execute(raise_on_error=False)
    assert isinstance(noscript, NoScriptError) and value == "1"
    client.script_load(SET_BOTH)  # every primary
    pipe = client.pipeline().execute_command("EVALSHA", script.sha, 2, IMAGES, VECTORS, "p").get(IMAGES)
    assert pipe.execute() == [2, "p"]
    assert client.pipeline().execute_command("EVAL", SET_BOTH, 2, IMAGES, VECTORS, "e").execute() == [2]

    async def in_asyncio() -> None:
        async with async_cluster.RedisCluster.from_url(cluster.url, decode_responses=True) as aclient:
            pipe = aclient.pipeline(transaction=False)
            for key in keys:
                pipe.incr(key)
            pipe.execute_command("EVALSHA", script.sha, 2, IMAGES, VECTORS, "ap")
            for key in reversed(keys):
                pipe.get(key)
            assert await pipe.execute() == [2, *range(2, 13), 2, *[str(i + 1) for i in reversed(range(1, 12))], "2"]
            with pytest.raises(RedisClusterException, match="evalsha is blocked"):
                await aclient.register_script(SET_BOTH)(keys=[IMAGES, VECTORS], args=["p"], client=aclient.pipeline())

    asyncio.run(in_asyncio())


def test_a_transaction_runs_on_the_keys_of_one_slot(cluster: Cluster, client: RedisCluster) -> None:
    script = client.register_script(SET_BOTH)
    script(keys=[IMAGES, VECTORS], args=["0"])  # loaded on every primary
    counter = "ss:c:{pets:3}:n"
    client.delete(counter)
    pipe = client.pipeline(transaction=True)
    pipe.set(IMAGES, "t").incr(counter).execute_command("EVALSHA", script.sha, 2, IMAGES, VECTORS, "tx").get(VECTORS)
    assert pipe.execute() == ["OK", 1, 2, "tx"]  # (no reply callbacks in a cluster transaction: "OK", not True)
    with pytest.raises(CrossSlotTransactionError):
        client.pipeline(transaction=True).set("a", 1).set("b", 2).execute()
    with pytest.raises(RedisClusterException, match="evalsha is blocked"):
        script(keys=[IMAGES, VECTORS], args=["x"], client=client.pipeline(transaction=True))
    # A keyless command (WAIT, INFO) cannot be routed inside a cluster transaction.
    with pytest.raises((RedisClusterException, AttributeError)):
        client.pipeline(transaction=True).set(IMAGES, "w").execute_command("WAIT", 1, 100).execute()

    def bump(pipe) -> None:  # WATCH, read, MULTI, write: optimistic locking within the slot
        value = int(pipe.get(counter))
        pipe.multi()
        pipe.set(counter, value + 10)

    client.transaction(bump, counter, IMAGES)
    assert client.get(counter) == "11"

    async def in_asyncio() -> None:
        async with async_cluster.RedisCluster.from_url(cluster.url, decode_responses=True) as aclient:
            pipe = aclient.pipeline(transaction=True)
            pipe.incr(counter).execute_command("EVALSHA", script.sha, 2, IMAGES, VECTORS, "atx").get(IMAGES)
            assert await pipe.execute() == [12, 2, "atx"]
            with pytest.raises(CrossSlotTransactionError):
                await aclient.pipeline(transaction=True).set("a", 1).set("b", 2).execute()

    asyncio.run(in_asyncio())


def test_wait_counts_replicas_only_on_the_connection_that_wrote(cluster: Cluster, client: RedisCluster) -> None:
    script = client.register_script(SET_BOTH)
    script(keys=[IMAGES, VECTORS], args=["0"])
    owner = cluster.primary_for_key(IMAGES)
    node = client.get_node_from_key(IMAGES)
    assert node.port == owner
    if client.get_default_node() == node:  # keyless commands go to the default node: another one
        client.set_default_node(next(n for n in client.get_primaries() if n != node))

    def script_wait_info(value: str, timeout_ms: int) -> tuple[int, dict]:
        """The script, WAIT and INFO in one cluster pipeline, the last two sent to the script's node:
        one connection (a pipeline takes one per node). CLIENT ID shows it."""
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("CLIENT ID", target_nodes=node)
        pipe.execute_command("EVALSHA", script.sha, 2, IMAGES, VECTORS, value)
        pipe.execute_command("WAIT", 1, timeout_ms, target_nodes=node)
        pipe.execute_command("INFO", "replication", target_nodes=node)
        pipe.execute_command("CLIENT ID", target_nodes=node)
        first_id, out, acked, info, last_id = pipe.execute()
        assert first_id == last_id and out == 2
        return acked, info

    earlier = cluster.node(owner)  # a connection last used before the writes below (as in a pool)
    assert earlier.ping()
    acked, _ = script_wait_info("1", 2000)
    assert acked == 1
    with replica_stopped(cluster, owner):
        started = time.monotonic()
        acked, info = script_wait_info("2", 500)
        assert acked == 0 and time.monotonic() - started >= 0.45  # the frozen replica does not have it
        assert info["slave0"]["offset"] < info["master_repl_offset"]  # nor does INFO say it has
        # The trap: WAIT waits for the primary's replication offset as of the connection's previous
        # command. On a connection last used before the write, it counts the frozen replica at once.
        assert earlier.wait(1, 500) == 1
        earlier.close()
        assert client.wait(1, 500) == 1  # RedisCluster.wait(): the default node, whatever was written
        assert client.pipeline().wait(1, 500).execute() == [1]  # a pipeline's WAIT: the default node too
    # Once the replica runs again it catches up, and a WAIT on the writing connection returns 1.
    assert script_wait_info("3", 2000)[0] == 1

    async def in_asyncio() -> None:
        async with async_cluster.RedisCluster.from_url(cluster.url, decode_responses=True) as aclient:
            await aclient.initialize()
            anode = aclient.get_node_from_key(IMAGES)
            # Separate calls take connections round-robin once a node has several (FIFO free list).
            await asyncio.gather(*(aclient.get(IMAGES) for _ in range(8)))
            ids = [await aclient.execute_command("CLIENT ID", target_nodes=anode) for _ in range(4)]
            assert len(set(ids)) > 1
            with replica_stopped(cluster, owner):
                pipe = aclient.pipeline(transaction=False)
                pipe.execute_command("EVALSHA", script.sha, 2, IMAGES, VECTORS, "a")
                pipe.execute_command("WAIT", 1, 500, target_nodes=anode)
                pipe.execute_command("INFO", "replication", target_nodes=anode)
                out, acked, info = await pipe.execute()
                assert (out, acked) == (2, 0) and info["role"] == "master"
            pipe = aclient.pipeline(transaction=False)
            pipe.execute_command("EVALSHA", script.sha, 2, IMAGES, VECTORS, "b")
            pipe.execute_command("WAIT", 1, 2000, target_nodes=anode)
            assert await pipe.execute() == [2, 1]

    asyncio.run(in_asyncio())


def test_sharded_and_plain_pubsub(cluster: Cluster, client: RedisCluster) -> None:
    channel = "ss:jobdone:{pets:3}"
    sharded = client.pubsub()
    sharded.ssubscribe(channel)
    assert sharded.get_sharded_message(timeout=2)["type"] == "ssubscribe"
    assert client.spublish(channel, "s1") == 1  # sent to the channel's slot owner
    message = sharded.get_sharded_message(timeout=2)
    assert (message["type"], message["data"]) == ("smessage", "s1")
    other = next(p for p in cluster.primaries() if p != cluster.primary_for_key(channel))
    with cluster.node(other) as wrong, pytest.raises(redis.exceptions.MovedError):
        wrong.spublish(channel, "x")  # SPUBLISH belongs to the slot's node (RedisCluster follows MOVED)
    sharded.close()

    # RedisCluster.publish() sends PUBLISH to the primary of the channel's slot (hashed like a key).
    for port in cluster.ports:
        with cluster.node(port) as node:
            node.config_resetstat()
    client.publish("ss:jobdone:routed", "r")
    published_on = []
    for port in cluster.ports:
        with cluster.node(port) as node:
            if node.info("commandstats").get("cmdstat_publish"):
                published_on.append(port)
    assert published_on == [cluster.primary_for_key("ss:jobdone:routed")]

    # PUBLISH is broadcast over the cluster bus: a subscriber on any primary receives what is
    # published on any node, replicas included.
    for round_, port in enumerate(cluster.primaries()):
        subscriber = client.pubsub(node=client.get_node("127.0.0.1", port))
        subscriber.psubscribe("ss:jobdone:*")
        assert subscriber.get_message(timeout=2)["type"] == "psubscribe"
        for publisher in cluster.ports:
            with cluster.node(publisher) as node:
                node.publish(f"ss:jobdone:j{publisher}", f"{round_}:{publisher}")
        got: list[int] = []
        deadline = time.monotonic() + 5
        while len(got) < len(cluster.ports) and time.monotonic() < deadline:
            message = subscriber.get_message(timeout=0.2)
            # The bus delivers asynchronously: a message of the round before may still arrive here.
            if message and message["type"] == "pmessage" and message["data"].startswith(f"{round_}:"):
                got.append(int(message["data"].split(":")[1]))
        assert sorted(got) == sorted(cluster.ports), port
        subscriber.close()

    async def in_asyncio() -> None:
        async with async_cluster.RedisCluster.from_url(cluster.url, decode_responses=True) as aclient:
            await aclient.initialize()
            asharded = aclient.pubsub()
            await asharded.ssubscribe(channel)
            assert (await asharded.get_sharded_message(timeout=2))["type"] == "ssubscribe"
            assert await aclient.spublish(channel, "a1") == 1
            message = await asharded.get_sharded_message(timeout=2)
            assert (message["type"], message["data"]) == ("smessage", "a1")
            await asharded.aclose()
            plain = aclient.pubsub(node=aclient.get_node("127.0.0.1", other))
            await plain.psubscribe("ss:jobdone:*")
            assert (await plain.get_message(timeout=2))["type"] == "psubscribe"
            for publisher in cluster.ports:
                with cluster.node(publisher) as node:
                    node.publish("ss:jobdone:async", str(publisher))
            got = []
            deadline = time.monotonic() + 5
            while len(got) < len(cluster.ports) and time.monotonic() < deadline:
                message = await plain.get_message(timeout=0.2)
                if message and message["type"] == "pmessage":
                    got.append(int(message["data"]))
            assert sorted(got) == sorted(cluster.ports)
            await plain.aclose()

    asyncio.run(in_asyncio())


def test_a_pipeline_that_meets_moved_resends_the_script_alone_and_its_wait_stays_behind(
    cluster: Cluster, client: RedisCluster
) -> None:
    """The slot moves (a manual failover) while the client's map still names the old primary: the
    pipeline's EVALSHA gets MOVED and is sent again on its own to the new primary, but the WAIT and
    INFO aimed at the old node ran there (a replica now): check the node before trusting them."""
    script = client.register_script(SET_BOTH)
    script(keys=[IMAGES, VECTORS], args=["0"])
    old = client.get_node_from_key(IMAGES)
    heir = cluster.replica_of(old.port)
    cluster.promote(heir)
    with cluster.node(heir) as node:
        node.script_load(SET_BOTH)  # (scripts are not replicated: see the failover test below)
    assert client.get_node_from_key(IMAGES) == old  # not yet refreshed
    pipe = client.pipeline(transaction=False)
    pipe.execute_command("EVALSHA", script.sha, 2, IMAGES, VECTORS, "moved")
    pipe.execute_command("WAIT", 1, 500, target_nodes=old)
    pipe.execute_command("INFO", "replication", target_nodes=old)
    out, acked, info = pipe.execute(raise_on_error=False)
    assert out == 2 and client.get(VECTORS) == "moved"
    assert isinstance(acked, redis.ResponseError) and "replica" in str(acked)
    assert info["role"] == "slave"
    assert client.get_node_from_key(IMAGES).port == heir  # the map was refreshed: a second try is right


def test_after_a_failover_subscriptions_and_scripts_follow_once_the_client_refreshes(tmp_path: Path) -> None:
    """Kills a primary: sharded subscriptions move to the promoted replica only once the same client
    has refreshed its slot map (a keyed command that hit the dead node), not by themselves; a new
    plain pubsub() picks the dead node again until then; the promoted replica has no scripts."""
    cluster = start_cluster(tmp_path)
    loop = asyncio.Runner()
    try:
        # The victim: the node of the pattern's slot (where a plain pubsub() subscribes), and of
        # a collection's keys and channel (one hash tag).
        pattern = "ss:jobdone:*"
        victim = cluster.primary_for_key(pattern)
        tag = next(t for t in (f"{{pets:{i}}}" for i in range(1000)) if cluster.primary_for_key(t) == victim)
        channel, images, vectors = f"ss:jobdone:{tag}", f"ss:c:{tag}:images", f"ss:c:{tag}:vectors"
        client = RedisCluster.from_url(cluster.url, decode_responses=True)
        publisher = RedisCluster.from_url(cluster.url, decode_responses=True)
        script = client.register_script(SET_BOTH)
        assert script(keys=[images, vectors], args=["0"]) == 2
        sharded = client.pubsub()
        sharded.ssubscribe(channel)
        assert sharded.get_sharded_message(timeout=2)["type"] == "ssubscribe"
        aclient = async_cluster.RedisCluster.from_url(cluster.url, decode_responses=True)
        loop.run(aclient.initialize())
        asharded = aclient.pubsub()
        loop.run(asharded.ssubscribe(channel))
        assert loop.run(asharded.get_sharded_message(timeout=2))["type"] == "ssubscribe"

        cluster.wait_replicated()
        cluster.kill(victim)
        promoted = cluster.wait_failover(victim)
        with cluster.node(promoted) as node:
            assert node.script_exists(script.sha) == [False]  # SCRIPT LOAD is not replicated

        def sync_message() -> str | None:
            for _ in range(5):
                try:
                    message = sharded.get_sharded_message(timeout=0.2)
                except redis.ConnectionError:
                    time.sleep(0.1)  # the subscription's connection still goes to the dead node
                    continue
                if message and message["type"] == "smessage":
                    return message["data"]
            return None

        async def async_message() -> str | None:
            for _ in range(5):
                try:
                    message = await asharded.get_sharded_message(timeout=0.2)
                except redis.ConnectionError:
                    await asyncio.sleep(0.1)
                    continue
                if message and message["type"] == "smessage":
                    return message["data"]
            return None

        def retried(call):
            for _ in range(100):
                try:
                    return call()
                except redis.ConnectionError:
                    time.sleep(0.05)
            raise AssertionError("no answer after the failover")

        assert retried(lambda: publisher.spublish(channel, "lost")) == 0  # nobody subscribed there yet
        assert sync_message() is None and loop.run(async_message()) is None
        stale = aclient.pubsub()  # a new plain pubsub() goes to the pattern's slot owner: the dead one
        with pytest.raises(redis.ConnectionError):
            loop.run(stale.psubscribe(pattern))
        loop.run(stale.aclose())

        # A keyed command through each client meets the dead node, and refreshes its slot map: the
        # sharded subscriptions follow, and the script is loaded again on NOSCRIPT.
        assert retried(lambda: script(keys=[images, vectors], args=["1"])) == 2
        for _ in range(100):
            try:
                loop.run(aclient.get(images))
                break
            except redis.ConnectionError:
                time.sleep(0.05)

        def subscribers() -> int:  # the re-subscriptions run in the background (thread, task)
            loop.run(asyncio.sleep(0.05))
            with cluster.node(promoted) as node:
                return node.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1]

        wait_until(lambda: subscribers() == 2, 10, "both sharded subscriptions on the promoted replica")
        assert publisher.spublish(channel, "after") == 2
        assert sync_message() == "after" and loop.run(async_message()) == "after"
        plain = aclient.pubsub()
        loop.run(plain.psubscribe(pattern))
        assert loop.run(plain.get_message(timeout=2))["type"] == "psubscribe"
        loop.run(plain.aclose())
        loop.run(asharded.aclose())
        loop.run(aclient.aclose())
        sharded.close()
        client.close()
        publisher.close()
    finally:
        loop.close()
        cluster.stop()
