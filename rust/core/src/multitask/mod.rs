//! Multi-task learning: Gram matrices, min-norm solver, projections, primary/auxiliary rule.
