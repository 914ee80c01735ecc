//! CGMH: keyword-constrained generation by Metropolis–Hastings over word edits.
