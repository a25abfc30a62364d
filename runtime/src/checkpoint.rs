//! Checkpoints in Hugging Face layout: takes a model (and optionally its tokenizer), gives a
//! directory with `config.json`, `model.safetensors` (HF tensor names, f32, the tied head left
//! out), `generation_config.json`, `tokenizer.json` and `tokenizer_config.json`, which
//! transformers loads as is and [`crate::model::load_hf_dir`] loads back bit-exact.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::model::{Model, ModelError, Result};
use crate::tokenizer::TextTokenizer;

/// Writes `model` (and `tokenizer`) as an HF directory at `dir`, creating it if needed.
pub fn save_hf_dir(
    model: &Model,
    tokenizer: Option<&TextTokenizer>,
    dir: impl AsRef<Path>,
) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let c = model.config();

    let write_json = |name: &str, value: &Value| -> Result<()> {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(value).expect("JSON of a value");
        std::fs::write(&path, text + "\n").map_err(|e| ModelError::io(&path, e))
    };
    write_json("config.json", &c.to_hf_json())?;

    let mut generation = serde_json::Map::new();
    generation.insert("_from_model_config".into(), json!(true));
    if let Some(b) = c.bos_token_id {
        generation.insert("bos_token_id".into(), json!(b));
    }
    let eos = if c.eos_token_ids.is_empty() {
        tokenizer.map(|t| t.eos_ids.clone()).unwrap_or_default()
    } else {
        c.eos_token_ids.clone()
    };
    match eos.as_slice() {
        [] => {}
        [one] => {
            generation.insert("eos_token_id".into(), json!(one));
        }
        many => {
            generation.insert("eos_token_id".into(), json!(many));
        }
    }
    if let Some(p) = c.pad_token_id.or(tokenizer.map(|t| t.pad_id)) {
        generation.insert("pad_token_id".into(), json!(p));
    }
    write_json("generation_config.json", &Value::Object(generation))?;

    // A LoRA model is written with its adapters merged in, so that the directory is a plain
    // HF model, and beside it the adapters alone in PEFT's layout.
    if let Some(config) = model.adapter_config() {
        write_json("adapter_config.json", &config)?;
        let path = dir.join(crate::model::ADAPTER_FILE);
        let adapters = model
            .adapter_tensors()
            .into_iter()
            .map(|(n, t)| Ok((n, t.detach().to_device(&candle_core::Device::Cpu)?)))
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize_to_file(
            adapters.iter().map(|(n, t)| (n.as_str(), t)),
            Some([("format".to_string(), "pt".to_string())].into()),
            &path,
        )
        .map_err(|e| write_error(&path, e))?;
        give_default_mode(&path).map_err(|e| ModelError::io(&path, e))?;
    }
    // Each weight is made (merged with its adapter, copied to the host, converted) only when
    // the writer reaches it, so saving holds one weight beyond the model at a time: a LoRA
    // model's merged copy of every adapted weight never exists at once, on the device or here.
    let path = dir.join("model.safetensors");
    let failed = std::cell::RefCell::new(None);
    let tensors: Vec<(String, Lazy)> = model
        .saved_weights()
        .into_iter()
        .map(|(name, weight)| {
            let lazy = Lazy {
                weight,
                dtype: model.dtype(),
                failed: &failed,
            };
            (name, lazy)
        })
        .collect();
    // transformers refuses safetensors files without `format: pt` metadata.
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        Some(metadata),
        &path,
    )
    .map_err(|e| write_error(&path, e))?;
    give_default_mode(&path).map_err(|e| ModelError::io(&path, e))?;
    if let Some(e) = failed.into_inner() {
        // The file holds zeros where the weight could not be made: it must not stay.
        let _ = std::fs::remove_file(&path);
        return Err(e.into());
    }

    if let Some(t) = tokenizer {
        t.save(dir)?;
    }
    Ok(())
}

/// Gives the file at `path` the permissions a file created by this process gets (0666 less the
/// umask, read from `/proc/self/status`). The safetensors writer writes through a temporary
/// file, which is created private (0600), so without this the weights of a saved model could
/// be read by their owner only, unlike the JSON files beside them. Where the umask cannot be
/// read (other systems), the file is left as written.
pub(crate) fn give_default_mode(path: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::PermissionsExt;
        let status = std::fs::read_to_string("/proc/self/status")?;
        let umask = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok());
        if let Some(umask) = umask {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666 & !umask))?;
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = path;
    Ok(())
}

/// A weight handed to the safetensors writer, made when the writer asks for its bytes. The
/// writer's `View` cannot fail, so a weight that cannot be made (a device error) records its
/// error in `failed` and gives zeros of its length; `save_hf_dir` then removes the file and
/// returns the error.
struct Lazy<'a> {
    weight: crate::model::SavedWeight,
    dtype: candle_core::DType,
    failed: &'a std::cell::RefCell<Option<candle_core::Error>>,
}

impl safetensors::View for &Lazy<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype.into()
    }

    fn shape(&self) -> &[usize] {
        self.weight.dims()
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let made = self.weight.make().and_then(|t| {
            t.detach()
                .to_device(&candle_core::Device::Cpu)?
                .to_dtype(self.dtype)?
                .contiguous()
        });
        match made {
            Ok(t) => std::borrow::Cow::Owned(safetensors::View::data(&t).into_owned()),
            Err(e) => {
                self.failed.borrow_mut().get_or_insert(e);
                std::borrow::Cow::Owned(vec![0u8; self.data_len()])
            }
        }
    }

    fn data_len(&self) -> usize {
        self.weight.dims().iter().product::<usize>() * self.dtype.size_in_bytes()
    }
}

/// The error of a failed safetensors write of `path`. A failed write (a full disk, say) is an IO
/// error of this file, which keeps its kind for the caller: the file is not "corrupt".
fn write_error(path: &Path, e: safetensors::SafeTensorError) -> ModelError {
    match e {
        safetensors::SafeTensorError::IoError(io) => ModelError::io(path, io),
        e => ModelError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write the disk had no room for stays an IO error of kind `StorageFull`, which the
    /// engine reports as a full disk; it never reads as a corrupt file.
    #[test]
    fn a_failed_write_keeps_its_io_kind() {
        let io = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let e = write_error(
            Path::new("m.safetensors"),
            safetensors::SafeTensorError::IoError(io),
        );
        let source = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .map(|io| io.kind());
        assert_eq!(source, Some(std::io::ErrorKind::StorageFull), "{e}");
        assert!(!e.to_string().contains("corrupt"), "{e}");
    }

    /// The weights get the permissions of the JSON files beside them (a file this process
    /// creates), not the private mode of the writer's temporary file.
    #[cfg(target_os = "linux")]
    #[test]
    fn saved_weights_are_as_readable_as_the_config() {
        use std::os::unix::fs::PermissionsExt;
        let mut c =
            crate::model::ModelConfig::new(crate::model::Family::Qwen2, 56, 32, 64, 2, 4, 2, true);
        c.max_position_embeddings = 64;
        let m = Model::tiny(&c, 1, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_hf_dir(&m, None, dir.path()).unwrap();
        let mode = |name: &str| {
            let meta = std::fs::metadata(dir.path().join(name)).unwrap();
            meta.permissions().mode() & 0o777
        };
        assert_eq!(mode("model.safetensors"), mode("config.json"));
    }
}
