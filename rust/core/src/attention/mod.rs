//! Linear attention: feature maps, streaming causal state, parallel and chunked forms.
