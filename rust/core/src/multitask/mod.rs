//! Multi-task learning: Gram matrices, min-norm solver, projections, primary/auxiliary rule.
//!
//! Every aggregator is "one pass for `G = J Jᵀ`, a K×K solve for the weights `w`, one pass
//! for `u = wᵀ J`" (Su, 多任务学习漫谈 II–III; torchjd's Gramian-weighted aggregators).

pub mod gram;
mod qp;
pub mod weights;

pub use gram::{combine, gram, MAX_TASKS};
pub use weights::{gradnorm_sum, mgda, pcgrad, pcgrad_orders, primary_auxiliary};
