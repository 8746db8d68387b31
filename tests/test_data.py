"""The echo series: shapes, the echo itself, determinism, order, stream independence, resumable position."""

import torch

from echo_lstm.data import TRAIN, VAL, ChunkBlocks, EchoDataModule, echo_series, echo_stream, to_chunks


def datamodule(**kw):
    args = dict(total_series_length=600, batch_size=4, truncated_backprop_length=5, echo_step=3,
                chunks_per_batch=7, val_series_length=200, seed=7)
    args.update(kw)
    return EchoDataModule(**args)


def test_shapes_and_echo():
    dm = datamodule()
    x, y = dm.make_epoch(0)
    assert x.shape == y.shape == (30, 4, 5)  # 150 steps per stream -> 30 chunks of 5
    assert set(x.unique().tolist()) <= {0, 1}
    flat_x = x.transpose(0, 1).reshape(4, -1)
    flat_y = y.transpose(0, 1).reshape(4, -1)
    assert torch.equal(flat_y[:, 3:], flat_x[:, :-3])  # target = input delayed by echo_step
    assert flat_y[:, :3].eq(0).all()  # the first echo_step targets are 0
    assert 0.4 < x.float().mean() < 0.6  # p = 0.5


def test_deterministic_and_new_each_epoch():
    a, b = datamodule().make_epoch(0), datamodule().make_epoch(0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(datamodule().make_epoch(1)[0], a[0])
    assert not torch.equal(datamodule(seed=8).make_epoch(0)[0], a[0])


def test_streams_are_independent_of_stream_count():
    # A stream's bits depend on (seed, split, epoch, stream) only, not on how many streams exist.
    x4, _ = echo_series(7, TRAIN, 0, range(4), 100, 3)
    x2, _ = echo_series(7, TRAIN, 0, range(2, 4), 100, 3)
    assert torch.equal(x4[2:], x2)
    assert not torch.equal(x4[0], x4[1])  # and streams differ from each other
    longer, _ = echo_stream(7, TRAIN, 0, 1, 300, 3)
    assert (longer[:100] == x4[1].numpy()).all()  # a longer series extends, not reshuffles


def test_validation_series_is_fixed_and_separate():
    dm = datamodule()
    v1, v2 = dm.val_series(), datamodule().val_series()
    assert torch.equal(v1["x"], v2["x"])
    assert v1["x"].shape == (4, 50)
    train0 = echo_series(7, TRAIN, 0, range(4), 50, 3)[0]
    assert not torch.equal(v1["x"], train0)
    assert torch.equal(v1["x"], echo_series(7, VAL, 0, range(4), 50, 3)[0])


def test_blocks_come_in_order_and_cover_the_epoch():
    dm = datamodule()
    loader = dm.train_dataloader()
    blocks = list(loader)
    assert len(blocks) == len(loader) == 5  # ceil(30 / 7)
    assert [b["first"] for b in blocks] == [True, False, False, False, False]
    assert [b["chunk0"] for b in blocks] == [0, 7, 14, 21, 28]
    x, _ = dm.make_epoch(0)
    assert torch.equal(torch.cat([b["x"] for b in blocks]), x)  # in order, nothing shuffled or dropped


def test_chunks_keep_time_order_within_a_stream():
    series = torch.arange(12).reshape(1, 12)
    chunks = to_chunks(series, 5)  # [2 chunks, 1 stream, 5]; the tail of 2 is dropped
    assert chunks.tolist() == [[[0, 1, 2, 3, 4]], [[5, 6, 7, 8, 9]]]


def test_loader_resumes_at_its_saved_position():
    dm = datamodule()
    loader = dm.train_dataloader()
    it = iter(loader)
    seen = [next(it) for _ in range(2)]
    state = loader.state_dict()
    assert state == {"epoch": 0, "next_block": 2}
    fresh = dm.train_dataloader()
    fresh.load_state_dict(state)
    rest = list(fresh)
    assert [b["chunk0"] for b in rest] == [14, 21, 28]
    assert torch.equal(rest[0]["x"], list(dm.train_dataloader())[2]["x"])
    assert seen[0]["first"] and not rest[0]["first"]


def test_loader_state_from_another_epoch_starts_fresh():
    dm = datamodule()
    loader = ChunkBlocks(dm.make_epoch, dm.n_chunks, 7, current_epoch=lambda: 1)
    loader.load_state_dict({"epoch": 0, "next_block": 5})  # saved at the end of epoch 0
    assert [b["chunk0"] for b in loader][0] == 0
