from marketdata.book import ASK, BID, OrderBook, checksum


def test_checksum_of_readme_example() -> None:
    book = OrderBook("X")
    book.reset(1, bids=[(100, 5), (99, 3)], asks=[(101, 2), (103, 7)])
    assert book.checksum() == checksum([(100, 5), (99, 3)], [(101, 2), (103, 7)])
    import zlib

    assert book.checksum() == zlib.crc32(b"101:2,103:7|100:5,99:3")
    book.set(BID, 100, 0)
    book.set(ASK, 102, 4)
    assert book.bids() == [(99, 3)]
    assert book.asks() == [(101, 2), (102, 4), (103, 7)]
