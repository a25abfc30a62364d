//! Tensor names: takes llama.cpp's GGUF tensor names (`blk.3.attn_q.weight`) and gives the
//! Hugging Face names (`model.layers.3.self_attn.q_proj.weight`) with the tensor's role, which
//! fixes its expected shape; also undoes llama.cpp's Q/K row permutation.

use candle_core::Tensor;

/// What a tensor is in the model, independent of its layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TensorRole {
    Embedding,
    FinalNorm,
    Head,
    AttnNorm,
    FfnNorm,
    Q,
    K,
    V,
    O,
    QBias,
    KBias,
    VBias,
    Gate,
    Up,
    Down,
}

/// An HF tensor name with its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HfName {
    pub name: String,
    pub role: TensorRole,
}

/// The per-layer tensors: llama.cpp suffix, HF suffix, role.
const LAYER_TENSORS: &[(&str, &str, TensorRole)] = &[
    (
        "attn_norm.weight",
        "input_layernorm.weight",
        TensorRole::AttnNorm,
    ),
    (
        "ffn_norm.weight",
        "post_attention_layernorm.weight",
        TensorRole::FfnNorm,
    ),
    ("attn_q.weight", "self_attn.q_proj.weight", TensorRole::Q),
    ("attn_k.weight", "self_attn.k_proj.weight", TensorRole::K),
    ("attn_v.weight", "self_attn.v_proj.weight", TensorRole::V),
    (
        "attn_output.weight",
        "self_attn.o_proj.weight",
        TensorRole::O,
    ),
    ("attn_q.bias", "self_attn.q_proj.bias", TensorRole::QBias),
    ("attn_k.bias", "self_attn.k_proj.bias", TensorRole::KBias),
    ("attn_v.bias", "self_attn.v_proj.bias", TensorRole::VBias),
    ("ffn_gate.weight", "mlp.gate_proj.weight", TensorRole::Gate),
    ("ffn_up.weight", "mlp.up_proj.weight", TensorRole::Up),
    ("ffn_down.weight", "mlp.down_proj.weight", TensorRole::Down),
];

/// The tensors outside the layers: llama.cpp name, HF name, role.
const GLOBAL_TENSORS: &[(&str, &str, TensorRole)] = &[
    (
        "token_embd.weight",
        "model.embed_tokens.weight",
        TensorRole::Embedding,
    ),
    (
        "output_norm.weight",
        "model.norm.weight",
        TensorRole::FinalNorm,
    ),
    ("output.weight", "lm_head.weight", TensorRole::Head),
];

/// Maps a llama.cpp tensor name to its HF name. `layers` is the block count from the metadata;
/// a layer index at or past it is an error, as is any name recap has no place for (dropping a
/// tensor silently would give a model that loads but computes something else).
pub(crate) fn hf_name(gguf_name: &str, layers: usize) -> Result<HfName, String> {
    if let Some((_, hf, role)) = GLOBAL_TENSORS.iter().find(|(g, _, _)| *g == gguf_name) {
        return Ok(HfName {
            name: hf.to_string(),
            role: *role,
        });
    }
    if let Some(rest) = gguf_name.strip_prefix("blk.") {
        if let Some((index, suffix)) = rest.split_once('.') {
            if let Ok(layer) = index.parse::<usize>() {
                if layer >= layers {
                    return Err(format!(
                        "layer {layer} is outside the {layers} layers given by the metadata"
                    ));
                }
                if let Some((_, hf, role)) = LAYER_TENSORS.iter().find(|(g, _, _)| *g == suffix) {
                    return Ok(HfName {
                        name: format!("model.layers.{layer}.{hf}"),
                        role: *role,
                    });
                }
            }
        }
    }
    if gguf_name == "rope_freqs.weight" {
        return Err("RoPE frequency factors (Llama 3.1 rope scaling) are not supported".into());
    }
    Err(
        "unknown tensor name; recap maps the llama.cpp tensors of the llama and qwen2 \
         architectures (token_embd, blk.N.attn_*/ffn_*, output_norm, output)"
            .into(),
    )
}

/// The llama.cpp name of an HF tensor name, for error messages about missing tensors.
pub(crate) fn gguf_name_of(hf: &str) -> String {
    if let Some((g, _, _)) = GLOBAL_TENSORS.iter().find(|(_, h, _)| *h == hf) {
        return g.to_string();
    }
    if let Some(rest) = hf.strip_prefix("model.layers.") {
        if let Some((layer, suffix)) = rest.split_once('.') {
            if let Some((g, _, _)) = LAYER_TENSORS.iter().find(|(_, h, _)| *h == suffix) {
                return format!("blk.{layer}.{g}");
            }
        }
    }
    hf.to_string()
}

/// The HF tensors a model of this family must have. The head is optional (tied embeddings);
/// Qwen2's attention always has q/k/v biases.
pub(crate) fn required_hf_names(arch: super::Architecture, layers: usize) -> Vec<String> {
    let mut names = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".to_string(),
    ];
    for layer in 0..layers {
        for (_, hf, role) in LAYER_TENSORS {
            let is_bias = matches!(
                role,
                TensorRole::QBias | TensorRole::KBias | TensorRole::VBias
            );
            if !is_bias || arch == super::Architecture::Qwen2 {
                names.push(format!("model.layers.{layer}.{hf}"));
            }
        }
    }
    names
}

/// Undoes llama.cpp's permutation of query or key rows for the llama architecture.
///
/// llama.cpp's converter reorders each head's rows from HF's "rotate half" layout (first half of
/// the head dimension, then second half) to its interleaved RoPE layout: in numpy terms
/// `w.reshape(heads, 2, head_dim / 2, in).swapaxes(1, 2)`. The inverse reshapes to
/// `(heads, head_dim / 2, 2, in)` and swaps axes 1 and 2 back. `w` is a weight `(rows, in)` or a
/// bias `(rows,)`; `heads` is the head count of this projection (the KV head count for keys).
pub fn unpermute_llama_rows(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims.first().copied().unwrap_or(0);
    if heads == 0 || rows % (2 * heads) != 0 {
        candle_core::bail!("{rows} rows cannot be split into {heads} heads of even size");
    }
    let half = rows / heads / 2;
    let inner: usize = dims[1..].iter().product();
    w.reshape((heads, half, 2, inner))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Architecture;

    #[test]
    fn maps_layer_and_global_names() {
        let q = hf_name("blk.12.attn_q.weight", 30).unwrap();
        assert_eq!(q.name, "model.layers.12.self_attn.q_proj.weight");
        assert_eq!(q.role, TensorRole::Q);
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight", 1).unwrap().name,
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(
            hf_name("blk.2.attn_v.bias", 3).unwrap().name,
            "model.layers.2.self_attn.v_proj.bias"
        );
        assert_eq!(hf_name("output.weight", 1).unwrap().name, "lm_head.weight");
        assert_eq!(
            hf_name("token_embd.weight", 1).unwrap().name,
            "model.embed_tokens.weight"
        );
    }

    #[test]
    fn rejects_unknown_and_out_of_range_names() {
        assert!(hf_name("blk.3.attn_q.weight", 3)
            .unwrap_err()
            .contains("outside the 3 layers"));
        assert!(hf_name("blk.0.attn_qkv.weight", 3)
            .unwrap_err()
            .contains("unknown tensor"));
        assert!(hf_name("rope_freqs.weight", 3)
            .unwrap_err()
            .contains("not supported"));
    }

    #[test]
    fn gguf_names_round_trip() {
        for name in required_hf_names(Architecture::Qwen2, 2) {
            let back = hf_name(&gguf_name_of(&name), 2).unwrap().name;
            assert_eq!(back, name);
        }
    }

    #[test]
    fn unpermute_inverts_the_llama_cpp_permutation() {
        // Two heads of head_dim 4, one input column, rows numbered 0..8 in HF order.
        let heads = 2;
        let hf: Vec<f32> = (0..8).map(|v| v as f32).collect();
        // llama.cpp's permutation per head: rows [0, 1, 2, 3] -> [0, 2, 1, 3].
        let permuted = [0f32, 2., 1., 3., 4., 6., 5., 7.];
        let t = Tensor::from_slice(&permuted, (8, 1), &candle_core::Device::Cpu).unwrap();
        let back = unpermute_llama_rows(&t, heads).unwrap();
        assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), hf);
        let bias = Tensor::from_slice(&permuted, 8, &candle_core::Device::Cpu).unwrap();
        let back = unpermute_llama_rows(&bias, heads).unwrap();
        assert_eq!(back.to_vec1::<f32>().unwrap(), hf);
        assert!(unpermute_llama_rows(&t, 3).is_err());
    }
}
