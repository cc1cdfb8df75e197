"""`make demo`: the real all-MiniLM-L6-v2 sentiment classifier, integer-only vs FP32, on held-out texts."""

from ibert_tvm.model_demo import run_model_demo


def test_minilm_classifier_demo_stays_close_to_float(report):
    r = run_model_demo(repeats=1)
    report(f"demo, all-MiniLM-L6-v2 classifier integer-only vs FP32 on {r['texts']} held-out texts: label agreement "
           f"{100 * r['label_agreement']:.0f}%, accuracy on {r['tweets']} labelled tweets "
           f"{100 * r['integer_tweet_accuracy']:.0f}% (FP32 {100 * r['fp32_tweet_accuracy']:.0f}%); "
           f"sentence-embedding cosine min {r['cosine_min']:.4f} mean {r['cosine_mean']:.4f}")
    assert r["texts"] == 32
    assert r["label_agreement"] >= 0.8
    assert r["cosine_mean"] >= 0.95
    assert r["cosine_min"] >= 0.90
