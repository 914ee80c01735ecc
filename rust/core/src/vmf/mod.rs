//! von Mises–Fisher: Bessel functions, Wood sampler, densities, fitting.
