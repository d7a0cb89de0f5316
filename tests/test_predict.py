"""A saved model labels each cell on its own: the same label whichever cells come with it.

Real pancreas cells, as raw counts and as TPM (a non-count file built from them,
``conftest.value_version``): a model fitted on 150 cells, saved and loaded again,
labels subsets of 1, 3 and 30 cells (training cells, and cells it never saw)
exactly as it labels all of them together, and labels its training cells as the
fit did.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from scllm_jax import ScllmModel
from scllm_jax.config import ScllmConfig
from scllm_jax.validation import InputError

from .conftest import value_version

CONFIG = ScllmConfig.tiny(use_semantic=False)
N_TRAIN = 150


@pytest.fixture(scope="module", params=["counts", "tpm"])
def fitted(request, baron, tmp_path_factory):
    """The fitted model, the same model saved and loaded, its training cells and 250 new cells."""
    cells = baron[:N_TRAIN + 250].copy()
    if request.param != "counts":
        cells = value_version(cells, request.param)
    train, new = cells[:N_TRAIN].copy(), cells[N_TRAIN:].copy()
    with pytest.warns() if request.param != "counts" else _no_warning():
        model = ScllmModel(CONFIG).fit(train, 4, progress=False)
    folder = tmp_path_factory.mktemp(f"model_{request.param}")
    model.save(folder)
    return model, ScllmModel.load(folder), train, new


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_training_cells_get_the_labels_of_the_fit(fitted):
    model, loaded, train, _ = fitted
    labels, embedding = loaded.predict(train, return_embedding=True)
    agreement = float(np.mean(labels == model.labels_))
    print(f"predict on the {N_TRAIN} training cells agrees with labels_ for {agreement:.1%}")
    assert agreement >= 0.95
    np.testing.assert_allclose(embedding, model.embedding_, atol=1e-4)


@pytest.mark.parametrize("size", [1, 3, 30])
@pytest.mark.parametrize("which", ["training", "new"])
def test_label_does_not_depend_on_the_other_cells(fitted, size, which):
    _, loaded, train, new = fitted
    cells = train if which == "training" else new
    everyone = loaded.predict(cells)
    assert len(np.unique(everyone)) > 1
    rng = np.random.default_rng(size)
    for _ in range(3):
        subset = np.sort(rng.choice(cells.n_obs, size, replace=False))
        np.testing.assert_array_equal(loaded.predict(cells[subset].copy()), everyone[subset])


def test_model_of_an_older_format_is_refused(fitted, tmp_path):
    fitted[0].save(tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["format_version"] = 1
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"holds model format 1, this version reads 2 \(which keeps the training "
                                         r"cells' graph.*\); refit the model and save it again"):
        ScllmModel.load(tmp_path)
