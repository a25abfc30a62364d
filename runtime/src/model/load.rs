//! Loading Hugging Face model directories: takes a directory with `config.json` and one
//! `model.safetensors` or shards listed in `model.safetensors.index.json`, gives a trainable
//! [`Model`] with f32 (or the requested dtype) master weights. Every tensor is checked against
//! the shape the config implies; errors name the file and the tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{safetensors::Load, DType, Device, Tensor};

use super::config::ModelConfig;
use super::error::{ModelError, Result};
use super::{weight_shapes, Model};

/// How to load a checkpoint.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The dtype of the stored (master) weights; f32 so AdamW keeps f32 moments.
    pub dtype: DType,
    /// Keep the weights as `Var`s (a policy) or as plain tensors (a frozen reference).
    pub trainable: bool,
    /// The device to put the weights on.
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: DType::F32,
            trainable: true,
            device: Device::Cpu,
        }
    }
}

/// Loads an HF directory as a trainable model with f32 weights on `device`.
pub fn load_hf_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Model> {
    load_hf_dir_with(
        dir,
        &LoadOptions {
            device: device.clone(),
            ..LoadOptions::default()
        },
    )
}

/// Loads an HF directory with explicit options.
pub fn load_hf_dir_with(dir: impl AsRef<Path>, options: &LoadOptions) -> Result<Model> {
    let dir = dir.as_ref();
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let files = safetensors_files(dir)?;
    let expected: HashMap<String, Vec<usize>> = weight_shapes(&config).into_iter().collect();
    let mut found: HashMap<String, Tensor> = HashMap::new();
    let mut origin: HashMap<String, PathBuf> = HashMap::new();
    for file in &files {
        let tensors = read_safetensors(file, |name| expected.contains_key(name))?;
        for (name, t) in tensors {
            origin.insert(name.clone(), file.clone());
            found.insert(name, t);
        }
    }
    let source = if files.len() == 1 {
        files[0].clone()
    } else {
        dir.join("model.safetensors.index.json")
    };
    check_tensors(&config, &found, |name| {
        origin.get(name).cloned().unwrap_or_else(|| source.clone())
    })?;
    Ok(Model::from_tensors(
        config,
        found,
        options.dtype,
        options.trainable,
        &options.device,
    )?)
}

/// Checks that `tensors` holds every weight `config` implies, with the implied shape; `origin`
/// names the file a tensor came from (or should have come from) for the error message.
pub(crate) fn check_tensors(
    config: &ModelConfig,
    tensors: &HashMap<String, Tensor>,
    origin: impl Fn(&str) -> PathBuf,
) -> Result<()> {
    for (name, shape) in weight_shapes(config) {
        match tensors.get(&name) {
            None => {
                return Err(ModelError::MissingTensor {
                    path: origin(&name),
                    tensor: name,
                })
            }
            Some(t) if t.dims() != shape.as_slice() => {
                return Err(ModelError::Shape {
                    path: origin(&name),
                    tensor: name.clone(),
                    expected: shape,
                    found: t.dims().to_vec(),
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

impl Model {
    /// Builds a model from tensors under their HF names (extra names are ignored), for example
    /// weights dequantised from a GGUF file. Shapes are checked against `config`; `source`
    /// names the origin in error messages.
    pub fn from_hf_tensors(
        config: ModelConfig,
        tensors: HashMap<String, Tensor>,
        options: &LoadOptions,
        source: &Path,
    ) -> Result<Model> {
        config
            .validate()
            .map_err(|m| ModelError::config(source, m))?;
        check_tensors(&config, &tensors, |_| source.to_path_buf())?;
        let keep: HashMap<String, Tensor> = weight_shapes(&config)
            .into_iter()
            .filter_map(|(name, _)| tensors.get(&name).map(|t| (name, t.clone())))
            .collect();
        Ok(Model::from_tensors(
            config,
            keep,
            options.dtype,
            options.trainable,
            &options.device,
        )?)
    }
}

/// The safetensors files of a directory: the shards named by `model.safetensors.index.json`, or
/// `model.safetensors`.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ModelError::Json {
                path: index.clone(),
                source,
            })?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::config(&index, "missing object `weight_map`"))?;
        let mut files: Vec<String> = Vec::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                ModelError::config(
                    &index,
                    format!("weight_map entry `{tensor}` is not a string"),
                )
            })?;
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                return Err(ModelError::config(
                    &index,
                    format!(
                        "weight_map entry `{tensor}` names a file outside the directory: {file:?}"
                    ),
                ));
            }
            if !files.iter().any(|f| f == file) {
                files.push(file.to_string());
            }
        }
        files.sort();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        Ok(vec![single])
    } else {
        Err(ModelError::io(
            &single,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no model.safetensors or model.safetensors.index.json in the directory",
            ),
        ))
    }
}

/// Reads the tensors of one safetensors file that `keep` accepts, as CPU tensors in their
/// stored dtype. Truncated or corrupt files give an error naming the file.
pub fn read_safetensors(
    path: &Path,
    keep: impl Fn(&str) -> bool,
) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let st =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if !keep(&name) {
            continue;
        }
        let t = view.load(&Device::Cpu).map_err(|e| ModelError::Tensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            message: e.to_string(),
        })?;
        out.insert(name, t);
    }
    Ok(out)
}
