"""A node keeps the versions of its clients' state that the server may still ask for."""

import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict

from conftest import tiny_config
from fedsim.experiments.setup import handler_for_config
from fedsim.local.client_state import StateVersions
from fedsim.runtime import protocol as P
from fedsim.runtime.inprocess import set_task_identity


def test_versions_step_back_and_forget():
    v = StateVersions()
    v.record(3, 0, (None, None))
    v.record(3, 1, (torch.ones(2), None))
    v.record(3, 2, (2 * torch.ones(2), torch.zeros(2)))
    v.forget_before(3, 1)  # the server's checkpoint counted 1 answer: version 0 can no longer be asked for
    assert sorted(v.versions[3]) == [1, 2] and v.take(3, 0) is None
    restored = StateVersions()
    restored.load_state_dict(v.state_dict())
    values = restored.take(3, 1)
    assert torch.equal(values[0], torch.ones(2)) and values[1] is None
    assert sorted(restored.versions.get(3, {})) == []  # versions from 1 on belong to a future that did not happen
    assert v.nbytes() == 3 * 2 * 4  # three float32 pairs


def _train(handler, count, keep, cid=0):
    arrays = ArrayRecord(torch_state_dict={k: torch.zeros_like(t) for k, t in handler.model.state_dict().items()})
    cfg = {"server-round": count + 1, "local-steps": 3, "lr": 0.1, "batch-size": 8, "seed": 3,
           "update-kind": P.UPDATE_DELTA, P.COMPRESSOR: "top-k", P.COMPRESS_K: 5, P.COMPRESS_UNBIASED: False,
           P.ERROR_FEEDBACK: "ef21", P.EF_INIT: "full", P.STATE_COUNT: count, P.STATE_KEEP: keep}
    msg = Message(P.train_content(arrays, cfg), dst_node_id=1, message_type=MessageType.TRAIN)
    context = Context(run_id=1, node_id=1, state=RecordDict(), run_config={},
                      node_config={"partition-id": cid, "num-partitions": 8})
    reply, = handler.train([msg], [context])
    if reply.has_error():
        raise ValueError(reply.error.reason)
    return reply.content[P.UPDATE]


@pytest.fixture
def ef21_handler():
    set_task_identity(1)  # messages are made outside a grid here
    return handler_for_config(tiny_config(**{"strategy.name": "ef21"}))


def test_a_lost_answer_is_retrained_from_the_version_the_server_counted(ef21_handler):
    ef21_handler.keep_versions()
    _train(ef21_handler, 0, 0)
    lost = _train(ef21_handler, 1, 0)  # an answer the server never received
    again = _train(ef21_handler, 1, 0)  # so it asks for count 1 again: the node steps back and retrains
    for key in (P.VALUES, P.INDICES):
        assert (lost[key].numpy() == again[key].numpy()).all()
    assert ef21_handler.state_counts[0] == 2
    g_i = ef21_handler.uplink.store.get(0)

    replay = handler_for_config(tiny_config(**{"strategy.name": "ef21"}))  # a node restarted from its saved state
    replay.keep_versions()
    replay.load_state_dict(ef21_handler.state_dict())
    assert torch.equal(replay.uplink.store.get(0), g_i)
    _train(replay, 0, 0)  # a resumed server's checkpoint from before any answer: back to the start
    assert list(replay.versions.versions[0]) == [0] and replay.state_counts[0] == 1


def test_without_the_version_the_client_refuses_by_name(ef21_handler):
    _train(ef21_handler, 0, 0)
    with pytest.raises(ValueError, match="client 0's state is out of sync: this node has applied 1 updates"):
        _train(ef21_handler, 0, 0)
    ef21_handler.keep_versions()
    _train(ef21_handler, 1, 1)
    _train(ef21_handler, 2, 2)  # state-keep 2: the version at count 1 is forgotten
    with pytest.raises(ValueError, match="out of sync"):
        _train(ef21_handler, 1, 1)
