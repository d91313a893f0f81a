"""Training wrappers that carry the papers' guarantees.

    EEWrapper(model, G, G̃=None, tau=..., epsilon=...)     seed 000, Algorithm 1
    TwoPhase(model, G, G2=None, tau=..., delta0=..., mode="last_layer" | "lazy", data=...)
                                                          seed 003, Algorithm 1
    add_ee_head(model, n=..., width=...)                  seed 000 §3.2.2 model modification
    ntk_rank / dense_ntk_rank                             rank K(w) checks for TwoPhase
    training_error(output, target)

Both wrappers work inside your own loop (``wrapper.step(closure_or_loss)``, ``on_step_end()``,
``on_epoch_end()``, ``wrapper.phase``, ``wrapper.optimizer``) or through ``wrapper.fit(data,
loss_fn, steps=...)``; ``state_dict()`` / ``load_state_dict()`` / ``save()`` / ``load()`` resume
on either side of the switch. See docs/training.md.
"""
from gconv.train._phased import FitResult, PhasedTrainer, training_error
from gconv.train.ee import EEWrapper, add_ee_head
from gconv.train.rank import dense_jacobian, dense_ntk_rank, ntk_rank
from gconv.train.two_phase import RankViolation, TwoPhase

__all__ = ["EEWrapper", "TwoPhase", "add_ee_head", "PhasedTrainer", "FitResult", "training_error", "ntk_rank",
           "dense_ntk_rank", "dense_jacobian", "RankViolation"]
