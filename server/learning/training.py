"""Fine-tune the serving sentence-transformers model on mined triples with sentence-transformers' own trainer.

MultipleNegativesRankingLoss with an explicit hard negative per row (the other rows' positives and negatives
are in-batch negatives); the no-duplicates batch sampler keeps a document that is the positive of two queries
out of one batch, where it would be a false in-batch negative. CachedMNRL gives the same loss with a large
effective batch at small memory. TripletLoss is here only to reproduce the collapse the gate must reject.

Seeded; GPU when present; nothing is written to stdout (stdout is the MCP channel): progress bars are off,
no reporting integrations, and the trainer logs through `logging` (stderr).
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

Loss = Literal["mnrl", "cached_mnrl", "triplet"]
# MultipleNegativesRankingLoss's own choices (sentence-transformers 6), for the bench to check before any work.
HARDNESS_MODES = ("in_batch_negatives", "hard_negatives", "all_negatives")
MNRL_DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 1.0
    learning_rate: float = 2e-5
    batch_size: int = 32
    loss: str = "mnrl"
    mini_batch_size: int = 16  # CachedMNRL's forward chunk
    max_seq_length: int | None = (
        128  # training-time cap: documents beyond it are cut (speed); serving keeps its own
    )
    warmup_ratio: float = 0.1
    merge_base: float = 0.0  # WiSE-FT: the base model's share of the saved weights (0: the trained model)
    # An experiment of the bench, not a setting: MNRL's hardness weighting (sentence-transformers' `hardness_mode`,
    # one of HARDNESS_MODES; None = off) at `hardness_strength`.
    hardness_mode: str | None = None
    hardness_strength: float = 0.0
    # An experiment of the bench, not a setting: MNRL's `directions` ("query_to_doc" is plain MNRL; adding
    # "doc_to_query" makes it symmetric: each positive must also pick out its own query among the batch's).
    directions: tuple[str, ...] = ("query_to_doc",)
    seed: int = 0
    device: str = "auto"


@dataclass(frozen=True)
class TrainResult:
    path: Path
    examples: int
    steps: int
    seconds: float
    cancelled: bool
    train_loss: float | None
    device: str
    resumed_at_step: int | None = None  # the checkpoint this run started from


class Cancelled(Exception):
    pass


def _quiet() -> None:
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def train_model(
    base_location: str,
    triples: Sequence[tuple[str, str, str]],
    out_dir: Path,
    config: TrainConfig | None = None,
    query_prompt: str = "",
    document_prompt: str = "",
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_dir: Path | None = None,
    anchors: Sequence[str] = (),
    anchor_weight: float = 0.0,
    denoise: Sequence[tuple[str, str]] = (),
    denoise_weight: float = 0.0,
) -> TrainResult:
    """Train on (query, positive text, negative text) rows and save the model to `out_dir`.

    With `checkpoint_dir`, training can outlive its process: it saves a checkpoint there every tenth of its
    steps and when `should_stop` stops it, and starts from the newest checkpoint it finds (model, optimizer,
    scheduler, random state and data order: the result equals an uninterrupted run's). The caller removes the
    folder once the job is over. Without it, a scratch folder beside `out_dir` is used and removed.

    `anchors` with `anchor_weight` > 0 (an experiment of `rift bench --learn`, not a setting): texts whose
    embeddings the training keeps near the base model's, by a cosine-distance loss of that weight trained
    beside the triples (learning without forgetting). The caller puts any prompt in the texts.

    `denoise` with `denoise_weight` > 0 (an experiment of the bench, not a setting): (damaged, original) corpus
    texts trained beside the triples with TSDAE's loss (a decoder tied to the encoder rebuilds the original
    from the damaged text's embedding): adaptation to the corpus's own language, the one label-free source
    of information that neither BM25 nor the base model already brings to a search."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )
    from sentence_transformers.training_args import BatchSamplers
    from transformers import PrinterCallback, ProgressCallback, TrainerCallback, set_seed

    cfg = config or TrainConfig()
    if not triples:
        raise ValueError("no training triples")
    _quiet()
    set_seed(cfg.seed)
    device = None if cfg.device == "auto" else cfg.device
    model = SentenceTransformer(base_location, device=device)
    serving_length = model.max_seq_length
    if cfg.max_seq_length:
        model.max_seq_length = min(serving_length or cfg.max_seq_length, cfg.max_seq_length)
    data = Dataset.from_dict(
        {
            "anchor": [t[0] for t in triples],
            "positive": [t[1] for t in triples],
            "negative": [t[2] for t in triples],
        }
    )
    if cfg.hardness_mode is not None and cfg.loss != "mnrl":
        raise ValueError(f"hardness weighting applies only to the mnrl loss, not {cfg.loss!r}")
    if tuple(cfg.directions) != ("query_to_doc",) and cfg.loss != "mnrl":
        raise ValueError(f"directions apply only to the mnrl loss, not {cfg.loss!r}")
    if cfg.loss == "mnrl":  # (hardness None / 0.0 and query_to_doc alone are the loss's own defaults: plain MNRL)
        loss = losses.MultipleNegativesRankingLoss(
            model,
            hardness_mode=cfg.hardness_mode,
            hardness_strength=cfg.hardness_strength,
            directions=tuple(cfg.directions),
        )
    elif cfg.loss == "cached_mnrl":
        loss = losses.CachedMultipleNegativesRankingLoss(
            model, mini_batch_size=cfg.mini_batch_size, show_progress_bar=False
        )
    elif cfg.loss == "triplet":
        loss = losses.TripletLoss(model)
    else:
        raise ValueError(f"unknown loss {cfg.loss!r}; choose mnrl, cached_mnrl or triplet")
    train_data: Any = data
    train_loss: Any = loss
    if anchors and anchor_weight > 0:
        teacher = model.encode(list(anchors), batch_size=32, convert_to_numpy=True, show_progress_bar=False)
        kept = Dataset.from_dict({"sentence": list(anchors), "label": teacher.tolist()})
        train_data = {"triples": data, "anchors": kept}
        train_loss = {"triples": loss, "anchors": _anchor_loss(model, anchor_weight)}
    if denoise and denoise_weight > 0:
        pairs = Dataset.from_dict({"damaged": [d for d, _ in denoise], "original": [o for _, o in denoise]})
        train_data = {**(train_data if isinstance(train_data, dict) else {"triples": data}), "denoise": pairs}
        train_loss = {
            **(train_loss if isinstance(train_loss, dict) else {"triples": loss}),
            "denoise": _denoise_loss(model, denoise_weight),
        }
    prompts: dict[str, str] = {}
    if query_prompt:
        prompts["anchor"] = query_prompt
    if document_prompt:
        prompts["positive"] = prompts["negative"] = document_prompt

    work = checkpoint_dir or out_dir.parent / f".{out_dir.name}.trainer"
    use_cpu = device == "cpu" or not torch.cuda.is_available()
    # The batch sampler may drop a few rows that would repeat a text in a batch: an estimate is enough here.
    rows = len(triples) + (len(anchors) if anchor_weight > 0 else 0) + (len(denoise) if denoise_weight > 0 else 0)
    steps = max(1, math.ceil(cfg.epochs * math.ceil(rows / cfg.batch_size)))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio in transformers 5
        seed=cfg.seed,
        data_seed=cfg.seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        prompts=prompts or None,
        report_to="none",
        disable_tqdm=True,
        logging_strategy="no",
        save_strategy="steps" if checkpoint_dir else "no",
        save_steps=max(1, steps // 10),
        save_total_limit=1,
        save_only_model=False,
        eval_strategy="no",
        use_cpu=use_cpu,
        dataloader_num_workers=0,
    )
    state = {"cancelled": False}

    class _Hooks(TrainerCallback):
        def on_step_end(self, args, state_, control, **kwargs):  # noqa: ANN001 - transformers' signature
            if progress is not None:
                progress(state_.global_step, state_.max_steps)
            if should_stop is not None and should_stop():
                state["cancelled"] = True
                control.should_training_stop = True
                control.should_save = checkpoint_dir is not None  # resume from here, not the last tenth
            return control

    # The model-card widget sampler draws a tqdm bar and global random numbers; rift writes no model card, not
    # even in a checkpoint (the trainer's saves would: it quotes training rows, a deleted collection's texts).
    model.model_card_data.set_widget_examples = lambda dataset: None
    model.save_pretrained = functools.partial(model.save_pretrained, create_model_card=False)
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train_data, loss=train_loss, callbacks=[_Hooks()]
    )
    # With tqdm off, transformers adds a PrinterCallback that print()s metrics: that would corrupt MCP's stdout.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    resume_from = latest_checkpoint(work) if checkpoint_dir else None
    if resume_from is not None:
        log.info("resuming training from %s", resume_from)
    started = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=resume_from)
    finally:
        if checkpoint_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - started
    model.max_seq_length = serving_length
    if not state["cancelled"]:
        if cfg.merge_base:
            merge_into(model, base_location, cfg.merge_base)
        # The fine-tune must serve with the instruction it was trained with: a bge model's query prompt comes
        # from rift's table of known models (models.py), which knows the base's name, not this folder's.
        model.prompts = {
            **(model.prompts or {}),
            **({"query": query_prompt} if query_prompt else {}),
            **({"document": document_prompt} if document_prompt else {}),
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save(str(out_dir), create_model_card=False)
    ran_on = "cpu" if use_cpu else "cuda"
    if state["cancelled"]:  # a cancel, or a shutdown that continues it at the next start: it did not finish
        log.info(
            "training stopped at step %d of %d after %.1fs (%s)", output.global_step, steps, seconds, ran_on
        )
    else:
        log.info("trained on %d triples in %.1fs (%s)", len(triples), seconds, ran_on)
    return TrainResult(
        path=out_dir,
        examples=len(triples),
        steps=int(output.global_step),
        seconds=seconds,
        cancelled=state["cancelled"],
        train_loss=float(output.training_loss) if output.training_loss is not None else None,
        device=ran_on,
        resumed_at_step=checkpoint_step(resume_from) if resume_from is not None else None,
    )


def _denoise_loss(model: Any, weight: float) -> Any:
    """TSDAE's loss (a decoder tied to the encoder rebuilds the original text), times `weight`; its decoder's
    own parameters (cross-attention, LM head) are the loss's, which the trainer's optimizer includes."""
    from sentence_transformers import losses

    class _Denoising(losses.DenoisingAutoEncoderLoss):
        def forward(self, sentence_features: Any, labels: Any) -> Any:
            return weight * super().forward(sentence_features, labels)

    return _Denoising(model, tie_encoder_decoder=True)


def _anchor_loss(model: Any, weight: float) -> Any:
    """Cosine distance of the student's embedding from the base model's (the label), times `weight`."""
    from sentence_transformers import losses

    class _Anchored(losses.EmbedDistillLoss):
        def forward(self, sentence_features: Any, labels: Any) -> Any:
            return weight * super().forward(sentence_features, labels)

    return _Anchored(model, distance_metric="cosine")


def latest_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint in `folder` (None when there is none yet). The trainer writes its state
    file last and removes the older checkpoint only after that, so a process killed while saving leaves a
    newer, incomplete folder beside a complete one; the incomplete one is removed."""
    if not folder.is_dir():
        return None
    found = sorted(
        (p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.rsplit("-", 1)[-1].isdigit()),
        key=checkpoint_step,
        reverse=True,
    )
    for path in found:
        if (path / "trainer_state.json").is_file():
            return str(path)
        shutil.rmtree(path, ignore_errors=True)
    return None


def checkpoint_step(checkpoint: str | Path) -> int:
    return int(Path(checkpoint).name.rsplit("-", 1)[-1])


def merge_into(model: Any, base_location: str, base_share: float) -> None:
    """Weight-space ensemble (WiSE-FT, Wortsman et al. 2022): every floating-point weight of the trained
    `model` becomes `base_share * base + (1 - base_share) * trained`, in place. It keeps part of the base
    model's behaviour on what the triples never showed, at no serving cost."""
    if not 0.0 <= base_share <= 1.0:
        raise ValueError(f"base_share must be between 0 and 1, got {base_share}")
    from sentence_transformers import SentenceTransformer

    base_state = SentenceTransformer(base_location, device="cpu").state_dict()
    state = model.state_dict()
    if base_state.keys() != state.keys():
        raise ValueError("the trained model's weights do not match its base model's")
    merged = {
        name: weight + (base_state[name].to(weight.device, weight.dtype) - weight) * base_share
        if weight.is_floating_point()
        else weight
        for name, weight in state.items()
    }
    model.load_state_dict(merged)
