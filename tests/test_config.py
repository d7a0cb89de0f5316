"""The configuration: sections, settings by name, the round trip through a plain dictionary, and the flat
dictionaries earlier versions saved (in models, checkpoints and ``uns['scllm']['params']``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scllm_jax.config import (FULL_BATCH_SCHEDULE, MINIBATCH_SCHEDULE, SECTIONS, PreprocessConfig, ScllmConfig,
                              TrainConfig)

#: ``ScllmConfig().to_dict()`` of the flat configuration before the sections (commit 7564848).
FLAT_V0 = json.loads((Path(__file__).parent / "data" / "config_flat_v0.json").read_text())


@pytest.mark.parametrize("config", [ScllmConfig(), ScllmConfig.tiny(minibatch_size=64, seed=4),
                                    ScllmConfig.paper(checkpoint_dir="ckpt", hidden_dims=(128, 64))])
def test_round_trip_through_a_plain_dictionary(config):
    values = config.to_dict()
    assert set(values) == {"seed", *SECTIONS}
    assert json.loads(json.dumps(values)) == values  # plain JSON
    assert ScllmConfig.from_dict(values) == config


def test_settings_by_name_land_in_their_sections():
    config = ScllmConfig(seed=2, n_pcs=30, minibatch_size=512, kmeans_n_init=7)
    assert config == ScllmConfig(seed=2, preprocess=PreprocessConfig(n_pcs=30),
                                 train=TrainConfig(minibatch_size=512)).replace(kmeans_n_init=7)
    assert (config.preprocess.n_pcs, config.train.minibatch_size, config.clustering.kmeans_n_init) == (30, 512, 7)
    # replace keeps what it is not told to change, and validates again.
    assert config.replace(n_pcs=40).train.minibatch_size == 512
    with pytest.raises(ValueError, match="n_pcs must be >= 1"):
        config.replace(n_pcs=0)
    with pytest.raises(ValueError, match=r"Unknown ScllmConfig settings \['npcs'\] \(npcs: did you mean n_pcs\?\)"):
        ScllmConfig(npcs=30)
    with pytest.raises(TypeError, match="takes a TrainConfig"):
        ScllmConfig(train=PreprocessConfig())


def test_one_epoch_count_for_both_engines():
    assert ScllmConfig().train.schedule(minibatch=False) == FULL_BATCH_SCHEDULE
    assert ScllmConfig().train.schedule(minibatch=True) == MINIBATCH_SCHEDULE
    config = ScllmConfig(pretrain_epochs=7)
    assert config.train.schedule(minibatch=False)[0] == config.train.schedule(minibatch=True)[0] == 7


def test_the_flat_format_of_earlier_versions_loads():
    # The defaults of that version, path 1's pooling included (a saved model keeps its own).
    assert ScllmConfig.from_dict(FLAT_V0) == ScllmConfig(path1_weights="standardised")
    # A changed mini-batch epoch count becomes the epoch count.
    assert ScllmConfig.from_dict({**FLAT_V0, "minibatch_pretrain_epochs": 2}).train.pretrain_epochs == 2
    assert ScllmConfig.from_dict({**FLAT_V0, "cluster_epochs": 50}).train.cluster_epochs == 50
    changed = {**FLAT_V0, "n_pcs": 30, "hidden_dims": [128], "use_semantic": True}
    assert ScllmConfig.from_dict(changed) == ScllmConfig(n_pcs=30, hidden_dims=(128,), use_semantic=True,
                                                         path1_weights="standardised")


def test_old_settings_that_cannot_be_kept_are_refused_by_name():
    with pytest.raises(ValueError, match=r"pretrain_epochs=50 \(full batch\) and minibatch_pretrain_epochs=2"):
        ScllmConfig.from_dict({**FLAT_V0, "pretrain_epochs": 50, "minibatch_pretrain_epochs": 2})
    with pytest.raises(ValueError, match=r"infonce_batch_size is no longer a setting \(it is fixed at 4096\)"):
        ScllmConfig.from_dict({**FLAT_V0, "infonce_batch_size": 512})
    with pytest.raises(ValueError, match=r"minibatch_cluster_epochs is now cluster_epochs"):
        ScllmConfig(minibatch_cluster_epochs=3)
