//! Which modules mlx-lm quantizes and with what (mlx_lm 0.32 `convert.py`
//! `mixed_quant_predicate_builder` and `utils.quantize_model`).
//!
//! - A module is quantized when it is a Linear or Embedding (here: a 2-D `.weight`) whose
//!   last dimension the top-level group size divides.
//! - `mixed_LOW_HIGH` recipes (affine only): HIGH bits for `lm_head`, and for `v_proj` /
//!   `v_a_proj` / `v_b_proj` / `down_proj` of the layers where `use_more_bits` holds
//!   (`i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2`, n = number of layers); LOW bits for every
//!   other quantized module. The layer index is the path component at the position of the first
//!   digit component of the first `down_proj` module; paths shorter than that use index 0.

use crate::{Error, Mode, QuantSpec};

/// An mlx-lm mixed-precision recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Recipe {
    Mixed2_6,
    Mixed3_4,
    Mixed3_6,
    Mixed4_6,
}

/// Recipe names as mlx-lm spells them.
pub const RECIPES: [&str; 4] = ["mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6"];

impl Recipe {
    /// Parse `mixed_3_6` etc.
    pub fn parse(s: &str) -> Result<Recipe, Error> {
        match s {
            "mixed_2_6" => Ok(Recipe::Mixed2_6),
            "mixed_3_4" => Ok(Recipe::Mixed3_4),
            "mixed_3_6" => Ok(Recipe::Mixed3_6),
            "mixed_4_6" => Ok(Recipe::Mixed4_6),
            other => Err(Error::Option {
                message: format!(
                    "unknown --recipe `{other}`: mlx-lm's recipes are {}",
                    RECIPES.join(", ")
                ),
            }),
        }
    }

    /// mlx-lm's name.
    pub fn name(self) -> &'static str {
        match self {
            Recipe::Mixed2_6 => "mixed_2_6",
            Recipe::Mixed3_4 => "mixed_3_4",
            Recipe::Mixed3_6 => "mixed_3_6",
            Recipe::Mixed4_6 => "mixed_4_6",
        }
    }

    /// (low, high) bits.
    pub fn bits(self) -> (u32, u32) {
        match self {
            Recipe::Mixed2_6 => (2, 6),
            Recipe::Mixed3_4 => (3, 4),
            Recipe::Mixed3_6 => (3, 6),
            Recipe::Mixed4_6 => (4, 6),
        }
    }
}

/// mlx-lm's `use_more_bits` (llama.cpp's Q4_K_M rule).
pub fn use_more_bits(index: usize, num_layers: usize) -> bool {
    let i = index as i64;
    let n = num_layers as i64;
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8).rem_euclid(3) == 2
}

/// The mixed predicate of one recipe over a model's module paths.
#[derive(Debug, Clone)]
pub struct Mixed {
    recipe: Recipe,
    group_size: usize,
    layer_location: usize,
    num_layers: usize,
}

impl Mixed {
    /// Build from the module paths (without `.weight`) of the model, in any order, and the
    /// number of layers. Fails as mlx-lm does when no module is a `down_proj`.
    pub fn new(
        recipe: Recipe,
        group_size: usize,
        module_paths: &[&str],
        num_layers: usize,
    ) -> Result<Mixed, Error> {
        let first = module_paths
            .iter()
            .find(|p| p.contains("down_proj"))
            .ok_or_else(|| Error::Option {
                message: format!(
                    "--recipe {}: the model has no `down_proj` module, which mlx-lm's mixed recipes need",
                    recipe.name()
                ),
            })?;
        let parts: Vec<&str> = first.split('.').collect();
        // Python's `for layer_location, k in enumerate(...): if k.isdigit(): break` leaves the
        // last index when no component is a number.
        let layer_location = parts
            .iter()
            .position(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
            .unwrap_or(parts.len().saturating_sub(1));
        Ok(Mixed {
            recipe,
            group_size,
            layer_location,
            num_layers,
        })
    }

    /// The spec of the module at `path`.
    pub fn spec(&self, path: &str) -> Result<QuantSpec, Error> {
        let parts: Vec<&str> = path.split('.').collect();
        let index = if parts.len() > self.layer_location {
            let k = parts[self.layer_location];
            k.parse::<usize>().map_err(|_| Error::Option {
                message: format!(
                    "--recipe {}: module `{path}` has `{k}` where mlx-lm expects a layer number",
                    self.recipe.name()
                ),
            })?
        } else {
            0
        };
        let more = use_more_bits(index, self.num_layers);
        let (low, high) = self.recipe.bits();
        // mlx-lm's three tests: v projections and down_proj of the chosen layers, lm_head.
        let v = path.contains("v_proj") || path.contains("v_a_proj") || path.contains("v_b_proj");
        let chosen = (v || path.contains("down_proj")) && more;
        let bits = if chosen || path.contains("lm_head") {
            high
        } else {
            low
        };
        Ok(QuantSpec {
            mode: Mode::Affine,
            bits,
            group_size: self.group_size,
        })
    }
}

/// Sort key that puts module paths in the order mlx-lm's llama-family model classes define
/// them (embeddings, layers by index with attention q/k/v/o before the MLP's gate/down/up,
/// final norm, `lm_head`), the order `nn.quantize` visits them and config.json lists them.
pub fn module_order_key(path: &str) -> (u8, usize, u32, String) {
    const LEAF_RANK: [&str; 7] = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "down_proj",
        "up_proj",
    ];
    if path.starts_with("lm_head") {
        return (3, 0, 0, path.to_string());
    }
    let parts: Vec<&str> = path.split('.').collect();
    if let Some(i) = parts.iter().position(|p| *p == "layers") {
        if let Some(n) = parts.get(i + 1).and_then(|p| p.parse::<usize>().ok()) {
            let leaf = parts.last().copied().unwrap_or("");
            let rank = LEAF_RANK
                .iter()
                .position(|r| *r == leaf)
                .map_or(100, |r| r as u32);
            return (1, n, rank, path.to_string());
        }
    }
    if path.contains("embed") {
        return (0, 0, 0, path.to_string());
    }
    (2, 0, 0, path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_3_6_on_30_layers() {
        let paths = ["model.embed_tokens", "model.layers.0.mlp.down_proj"];
        let m = Mixed::new(Recipe::Mixed3_6, 64, &paths, 30).unwrap();
        assert_eq!(m.spec("model.embed_tokens").unwrap().bits, 3);
        assert_eq!(m.spec("lm_head").unwrap().bits, 6);
        assert_eq!(m.spec("model.layers.0.mlp.down_proj").unwrap().bits, 6);
        assert_eq!(m.spec("model.layers.4.mlp.down_proj").unwrap().bits, 3);
        assert_eq!(m.spec("model.layers.5.self_attn.v_proj").unwrap().bits, 6);
        assert_eq!(m.spec("model.layers.5.self_attn.q_proj").unwrap().bits, 3);
        let more: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(
            more,
            vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
        );
    }
}
