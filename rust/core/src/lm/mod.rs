//! Native n-gram language model: modified Kneser–Ney, ARPA and binary formats, queries.
