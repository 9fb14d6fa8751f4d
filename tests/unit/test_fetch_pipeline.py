"""The pieces of a fetch that decrypts as it downloads (decision 0018): the queue the decrypting thread reads, and
the relay's joining of a payload's segments into larger writes. Both must hand on every byte, in order, once."""

from __future__ import annotations

import threading

from labrelay.client.fetch import _Feed
from labrelay.http.routes.transfers import _blocks


def test_the_feed_reads_back_what_was_put_in_order_whatever_the_read_sizes() -> None:
    data = bytes(range(256)) * 1000
    pieces = [data[i : i + 7001] for i in range(0, len(data), 7001)]
    feed = _Feed()

    def produce() -> None:
        for piece in pieces:
            feed.put(piece)
        feed.close()

    producer = threading.Thread(target=produce)
    producer.start()
    got, size = [], 1
    while part := feed.read(size):
        got.append(part)
        size = size * 3 % 70_000 + 1
    producer.join()
    assert b"".join(got) == data
    assert feed.read(1) == b""  # at the end, and it stays there
    assert feed.read() == b""


def test_the_feed_reads_the_rest_at_once() -> None:
    feed = _Feed()
    feed.put(b"age-header\n")
    feed.put(b"rest")
    feed.close()
    assert feed.read(3) == b"age"
    assert feed.read() == b"-header\nrest"


def test_a_feed_abandoned_by_its_reader_never_blocks_the_download() -> None:
    feed = _Feed()
    for _ in range(_Feed.DEPTH):
        feed.put(b"x")  # full
    feed.abandon()  # the reader stopped: a payload that failed a check
    done = threading.Event()

    def produce() -> None:
        for _ in range(10 * _Feed.DEPTH):
            feed.put(b"y")
        feed.close()
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    assert done.wait(10)


def test_the_relay_joins_segments_into_blocks_and_loses_nothing() -> None:
    segments = [bytes([i % 256]) * 65_536 for i in range(10)] + [b"tail"]
    blocks = list(_blocks(iter(segments), size=4 * 65_536))
    assert b"".join(blocks) == b"".join(segments)
    assert [len(b) for b in blocks] == [4 * 65_536, 4 * 65_536, 2 * 65_536 + 4]
    assert list(_blocks(iter([]))) == []
