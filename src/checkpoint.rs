//! Checkpoint loading: finds the format of a file or directory, reads its
//! tensors without running pickle code, renames them to the official
//! Long-CLIP/OpenAI-CLIP state-dict names and infers the architecture from
//! their shapes, as the official `build_model` does.
//!
//! Formats: the official Long-CLIP `.pt` (`torch.save` of a state dict, two
//! positional tables), OpenAI-CLIP-style state dicts (77 positions), Hugging
//! Face `CLIPModel` directories or safetensors files, and our own
//! safetensors output (official names, config in the metadata).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::family::{self, Family, Storage};
use crate::rng::SplitMix;

/// Positions Long-CLIP copies unchanged from CLIP (knowledge-preserved
/// stretching): the official `keep_len`, and the split of a checkpoint whose
/// config does not say otherwise ([`TextConfig::keep_positions`]).
pub const KEEP_POSITIONS: usize = 20;
/// The extra key of an exported `config.json` that records the split.
pub const HF_KEEP_KEY: &str = "longclip_keep_positions";
/// The extra key of an exported `config.json` that records the model family
/// (`"long_clip"`, `"fg_clip"`, `"goal"`): a GOAL export has the tensors of a
/// Long-CLIP HF port, and only this key tells them apart.
pub const HF_FAMILY_KEY: &str = "longclip_family";
/// Metadata key under which our safetensors files store the [`Config`].
pub const CONFIG_METADATA_KEY: &str = "longclip.config";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    QuickGelu,
    Gelu,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_width: usize,
    pub context_length: usize,
    pub vocab_size: usize,
    /// Long-CLIP split: rows `0..keep_positions` of the positional table come
    /// from `positional_embedding`, the rest from `positional_embedding_res`
    /// (20 unless stretched with another `--keep`; files without it load as 20).
    #[serde(default = "default_keep_positions")]
    pub keep_positions: usize,
}

fn default_keep_positions() -> usize {
    KEEP_POSITIONS
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisionConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_width: usize,
    pub patch_size: usize,
    pub image_size: usize,
}

impl VisionConfig {
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub embed_dim: usize,
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub activation: Activation,
    /// Tokenizer, preprocessing and text tables ([`crate::family`]); files
    /// written before families existed load as Long-CLIP (and Long-CLIP's
    /// configs are written as before, without the field).
    #[serde(default, skip_serializing_if = "Family::is_long_clip")]
    pub family: Family,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `torch.save` zip of a state dict with official names.
    TorchStateDict,
    /// A TorchScript archive (OpenAI's released `.pt`).
    TorchScript,
    /// safetensors with official names (our own output).
    Safetensors,
    /// Hugging Face `CLIPModel` names (directory or single file).
    HuggingFace,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Format::TorchStateDict => "torch state dict (.pt zip)",
            Format::TorchScript => "TorchScript archive",
            Format::Safetensors => "safetensors (official names)",
            Format::HuggingFace => "Hugging Face CLIPModel",
        };
        f.write_str(s)
    }
}

/// A loaded checkpoint: tensors under official names, in their stored dtypes.
pub struct Checkpoint {
    pub path: PathBuf,
    pub format: Format,
    pub config: Config,
    pub tensors: HashMap<String, Tensor>,
    /// Keys in the file that the model does not use.
    pub ignored: Vec<String>,
}

impl Checkpoint {
    /// Long-CLIP checkpoints carry two tables: rows 0..K come from
    /// `positional_embedding`, rows K.. from `positional_embedding_res`
    /// (K = `config.text.keep_positions`, 20 for the released models).
    pub fn is_long_clip(&self) -> bool {
        self.tensors.contains_key("positional_embedding_res")
    }

    /// The positional table the text encoder adds, merged into one.
    pub fn text_positions(&self) -> Result<Tensor> {
        let pe = self.get("positional_embedding")?;
        let Some(res) = self.tensors.get("positional_embedding_res") else {
            return Ok(pe.clone());
        };
        let n = pe.dim(0)?;
        let keep = self.config.text.keep_positions.min(n);
        let head = pe.narrow(0, 0, keep)?.to_dtype(DType::F32)?;
        let tail = res.narrow(0, keep, n - keep)?.to_dtype(DType::F32)?;
        Ok(Tensor::cat(&[head, tail], 0)?)
    }

    pub fn get(&self, key: &str) -> Result<&Tensor> {
        self.tensors
            .get(key)
            .with_context(|| format!("{}: missing tensor '{key}'", self.path.display()))
    }

    /// Stored dtypes, counted, e.g. {"F16": 40, "F32": 23}.
    pub fn dtype_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for t in self.tensors.values() {
            *counts.entry(format!("{:?}", t.dtype())).or_insert(0) += 1;
        }
        counts
    }

    /// A format-independent identity: sha256 over every tensor's name, dtype,
    /// shape and bytes in name order, so a `.pt` and its safetensors copy
    /// agree. Tensors the family carries unread (FG-CLIP's training-only
    /// logit scales) are left out: they change nothing computed. "sha256:"
    /// and 64 hex digits.
    pub fn fingerprint(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let carried = self.config.family.rules().carried_keys();
        let mut keys: Vec<&String> = self.tensors.keys().filter(|k| !carried.contains(&k.as_str())).collect();
        keys.sort();
        let mut hash = Sha256::new();
        for key in keys {
            let t = &self.tensors[key];
            hash.update(format!("{key}|{:?}|{:?}|", t.dtype(), t.dims()).as_bytes());
            hash.update(tensor_bytes(t)?);
        }
        // The split changes what a Long-CLIP computes from the same tensors;
        // hashed only when it is not the official 20, so older fingerprints hold.
        if self.is_long_clip() && self.config.text.keep_positions != KEEP_POSITIONS {
            hash.update(format!("keep_positions|{}|", self.config.text.keep_positions).as_bytes());
        }
        // The family changes tokens and pixels from the same tensors (a GOAL
        // .pth and a Long-CLIP HF port can hold the same ones); hashed only
        // when it is not Long-CLIP, so older fingerprints (and caches) hold.
        if self.config.family != Family::LongClip {
            hash.update(format!("family|{:?}|", self.config.family).as_bytes());
        }
        let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(format!("sha256:{hex}"))
    }

    pub fn parameter_count(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count()).sum()
    }
}

/// Raw little-endian bytes of a CPU tensor.
fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => t.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => t.to_vec1::<half::f16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::BF16 => t.to_vec1::<half::bf16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F64 => t.to_vec1::<f64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        other => t.to_dtype(DType::F32).map_err(|e| anyhow::anyhow!("{other:?}: {e}"))?.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
    })
}

/// Loads a checkpoint from a file or a Hugging Face model directory.
pub fn load(path: &Path) -> Result<Checkpoint> {
    if !path.exists() {
        bail!("{}: no such file or directory", path.display());
    }
    let (format, raw, metadata) = if path.is_dir() {
        read_hf_dir(path)?
    } else {
        read_file(path)?
    };
    let raw = strip_wrapper_prefix(raw);
    let storage = match format {
        Format::HuggingFace => Storage::HfFiles,
        Format::TorchStateDict if looks_like_hf(&raw) => Storage::HfTorchZip,
        _ if looks_like_hf(&raw) => Storage::HfFiles,
        _ => Storage::Official,
    };
    let family = match &metadata.config {
        Some(c) if storage == Storage::Official => {
            family::check_recorded_official(&raw, path, c.family)?;
            c.family
        }
        Some(c) => family::resolve(&raw, storage, path, Some(c.family))?,
        None => {
            let recorded = metadata.hf_config.as_ref().map(|hf| recorded_family(hf, path)).transpose()?.flatten();
            family::resolve(&raw, storage, path, recorded)?
        }
    };
    // Official names (our safetensors of any family) are final already.
    let tensors = match storage {
        Storage::Official => raw,
        _ => {
            let raw = family::prepare(family, raw).with_context(|| format!("{}: {} checkpoint", path.display(), family.name()))?;
            hf_to_official(raw, path)?
        }
    };
    // A bare HF state dict (GOAL's .pth) takes heads and activation from the
    // base model's config.json beside it, as the official code loads it.
    let hf_config = match storage {
        Storage::HfTorchZip => match metadata.hf_config {
            Some(hf) => Some(hf),
            None => family::goal::base_config(path)?,
        },
        _ => metadata.hf_config,
    };
    let config = match (metadata.config, hf_config) {
        (Some(c), _) => c,
        (None, Some(hf)) => Config { family, ..config_from_hf(&hf, &tensors, path)? },
        (None, None) => Config { family, ..infer_config(&tensors, path)? },
    };
    let (tensors, ignored) = keep_model_keys(tensors, &config);
    let ckpt = Checkpoint { path: path.to_path_buf(), format, config, tensors, ignored };
    check_shapes(&ckpt, storage != Storage::Official)?;
    Ok(ckpt)
}

/// The family an HF config.json records ([`HF_FAMILY_KEY`]), if any.
fn recorded_family(hf: &serde_json::Value, path: &Path) -> Result<Option<Family>> {
    let Some(value) = hf.get(HF_FAMILY_KEY) else {
        return Ok(None);
    };
    serde_json::from_value(value.clone()).map(Some).with_context(|| {
        format!("{}: config.json's '{HF_FAMILY_KEY}' is {value}, expected \"long_clip\", \"fg_clip\" or \"goal\"", path.display())
    })
}

#[derive(Default)]
struct Metadata {
    config: Option<Config>,
    hf_config: Option<serde_json::Value>,
}

type Tensors = HashMap<String, Tensor>;

fn read_file(path: &Path) -> Result<(Format, Tensors, Metadata)> {
    let mut head = [0u8; 9];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let magic: [u8; 8] = head[..8].try_into().expect("8 bytes");
    if n == 0 {
        bail!("{}: empty file", path.display());
    }
    if magic.starts_with(b"PK") {
        return guarded(path, || read_torch_zip(path)).map(|(f, t)| (f, t, Metadata::default()));
    }
    if magic[0] == 0x80 {
        bail!(
            "{}: legacy (non-zip) torch.save format, written by torch < 1.6; \
             re-save it with a newer torch: torch.save(torch.load(f), 'new.pt')",
            path.display()
        );
    }
    // A safetensors header always has '{' at byte 8; a gzip header never
    // does (byte 8 is its XFL flag), though its first 8 can pass for a length.
    if magic.starts_with(&[0x1f, 0x8b, 0x08]) && head[8] != b'{' {
        return read_gzipped_safetensors(path);
    }
    if is_safetensors_header(&magic) {
        let data = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        return guarded(path, || read_safetensors(&data, path));
    }
    bail!(
        "{}: not a checkpoint (expected a torch .pt zip, a .safetensors file (or .safetensors.gz) or a Hugging Face model directory)",
        path.display()
    )
}

/// Third-party parsers must not take the process down on a hostile file:
/// a panic inside them becomes an error naming the file.
fn guarded<T>(path: &Path, read: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)) {
        Ok(result) => result,
        Err(_) => bail!("{}: corrupt file (the parser gave up on it)", path.display()),
    }
}

/// safetensors starts with a little-endian u64 header length then `{`.
fn is_safetensors_header(magic: &[u8; 8]) -> bool {
    let len = u64::from_le_bytes(*magic);
    len > 1 && len < 100_000_000
}

/// Largest checkpoint a .gz may expand to: well above LongCLIP-L in f32,
/// small enough that a hostile file cannot exhaust memory.
const MAX_GUNZIPPED_BYTES: u64 = 4 << 30;

/// A gzip-compressed safetensors file (how the bundled demo model ships:
/// its never-trained token rows are zeros, which compress away).
fn read_gzipped_safetensors(path: &Path) -> Result<(Format, Tensors, Metadata)> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut data = Vec::new();
    flate2::read::GzDecoder::new(file)
        .take(MAX_GUNZIPPED_BYTES + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("{}: not a valid gzip file", path.display()))?;
    if data.len() as u64 > MAX_GUNZIPPED_BYTES {
        bail!("{}: expands to more than {} GiB", path.display(), MAX_GUNZIPPED_BYTES >> 30);
    }
    let head: [u8; 8] = data.get(..8).and_then(|h| h.try_into().ok()).unwrap_or_default();
    if !is_safetensors_header(&head) {
        bail!("{}: a gzip file that does not hold a safetensors checkpoint", path.display());
    }
    guarded(path, || read_safetensors(&data, path))
}

fn read_safetensors(data: &[u8], path: &Path) -> Result<(Format, Tensors, Metadata)> {
    let (_, header) = safetensors::SafeTensors::read_metadata(data)
        .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
    let mut meta = Metadata::default();
    if let Some(json) = header.metadata().as_ref().and_then(|m| m.get(CONFIG_METADATA_KEY)) {
        let config: Config = serde_json::from_str(json)
            .with_context(|| format!("{}: bad '{CONFIG_METADATA_KEY}' metadata", path.display()))?;
        meta.config = Some(config);
    }
    let tensors = candle_core::safetensors::load_buffer(data, &Device::Cpu)
        .with_context(|| format!("{}: cannot read tensors", path.display()))?;
    Ok((Format::Safetensors, tensors, meta))
}

fn read_hf_dir(dir: &Path) -> Result<(Format, Tensors, Metadata)> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("{}: not a model directory (no readable config.json)", dir.display()))?;
    let hf: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid JSON", config_path.display()))?;
    let weights = ["model.safetensors", "pytorch_model.bin"]
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.exists())
        .with_context(|| {
            format!("{}: no model.safetensors or pytorch_model.bin (sharded checkpoints are not supported)", dir.display())
        })?;
    let (_, tensors, mut meta) = read_file(&weights)?;
    meta.hf_config = Some(hf);
    Ok((Format::HuggingFace, tensors, meta))
}

// ---------------------------------------------------------------------------
// torch zip archives

fn read_torch_zip(path: &Path) -> Result<(Format, Tensors)> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .with_context(|| format!("{}: not a valid zip archive", path.display()))?;
    let names: Vec<String> = (0..zip.len()).filter_map(|i| zip.name_for_index(i).and_then(|n| n.ok()).map(|n| n.to_string())).collect();
    let pkl_name = names
        .iter()
        .find(|n| n.ends_with("data.pkl"))
        .cloned()
        .with_context(|| format!("{}: zip archive has no data.pkl (not a torch.save file)", path.display()))?;
    let is_script = names.iter().any(|n| n.ends_with("constants.pkl"));
    let object = {
        let entry = zip.by_name(&pkl_name)?;
        let mut reader = std::io::BufReader::new(entry);
        let mut stack = Stack::empty();
        stack
            .read_loop(&mut reader)
            .and_then(|_| stack.finalize())
            .map_err(|e| unreadable_pickle(path, is_script, e))?
    };
    let dir = PathBuf::from(pkl_name.trim_end_matches(".pkl"));
    let mut infos = Vec::new();
    collect_tensor_infos(object, "", &dir, &mut infos);
    if infos.is_empty() {
        bail!(
            "{}: no tensors found in the pickle{}",
            path.display(),
            if is_script { script_hint() } else { "" }
        );
    }
    let mut tensors = HashMap::new();
    for info in infos {
        let tensor = read_tensor(&mut zip, &info)
            .with_context(|| format!("{}: cannot read tensor '{}'", path.display(), info.name))?;
        tensors.insert(info.name, tensor);
    }
    let format = if is_script { Format::TorchScript } else { Format::TorchStateDict };
    Ok((format, tensors))
}

fn script_hint() -> &'static str {
    " (this is a TorchScript archive such as OpenAI's released ViT-B-16.pt; \
     convert it to a state dict first: python -c \"import clip, torch; \
     m, _ = clip.load('ViT-B/16', device='cpu', jit=False); \
     torch.save(m.state_dict(), 'ViT-B-16.state_dict.pt')\")"
}

fn unreadable_pickle(path: &Path, is_script: bool, e: candle_core::Error) -> anyhow::Error {
    let hint = if is_script { script_hint() } else { "" };
    anyhow::anyhow!("{}: cannot parse the pickle: {e}{hint}", path.display())
}

/// Walks dicts (state dicts, nested `{"state_dict": ...}`) and TorchScript
/// module objects, naming tensors by their dotted path.
fn collect_tensor_infos(object: Object, prefix: &str, dir: &Path, out: &mut Vec<TensorInfo>) {
    let entries = match object {
        Object::Dict(entries) => entries,
        Object::Build { args, .. } => return collect_tensor_infos(*args, prefix, dir, out),
        _ => return,
    };
    for (key, value) in entries {
        let Object::Unicode(key) = key else { continue };
        let name = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
        match value.clone().into_tensor_info(Object::Unicode(name.clone()), dir) {
            Ok(Some(info)) => out.push(info),
            Ok(None) => collect_tensor_infos(value, &name, dir, out),
            // An unsupported storage type: the shape check names the key if it is needed.
            Err(_) => {}
        }
    }
}

fn read_tensor<R: std::io::Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    info: &TensorInfo,
) -> Result<Tensor> {
    let mut entry = zip
        .by_name(&info.path)
        .with_context(|| format!("storage '{}' missing from the archive", info.path))?;
    let layout = &info.layout;
    let fortran = layout.is_fortran_contiguous() && !layout.is_contiguous();
    if !layout.is_contiguous() && !fortran {
        bail!("non-contiguous tensor layouts are not supported ({layout:?})");
    }
    let skip = layout.start_offset() as u64;
    std::io::copy(&mut (&mut entry).take(skip), &mut std::io::sink())?;
    let dims = layout.dims();
    let need = layout.shape().elem_count() * info.dtype.size_in_bytes();
    if (need as u64).saturating_add(skip) > entry.size() {
        bail!("tensor of shape {dims:?} needs {need} bytes but its storage holds {}", entry.size());
    }
    let shape: Vec<usize> = if fortran { dims.iter().rev().copied().collect() } else { dims.to_vec() };
    let t = read_storage(&mut entry, info.dtype, need, &shape).context("storage is shorter than the tensor")?;
    if !fortran {
        return Ok(t);
    }
    let perm: Vec<usize> = (0..dims.len()).rev().collect();
    Ok(t.permute(perm)?.contiguous()?)
}

/// `need` little-endian bytes of `dtype` read into a tensor of `shape`,
/// straight into the tensor's own buffer for the float dtypes checkpoints
/// hold (a 350 MB `.pt` is then not copied a second time), else through
/// a byte buffer.
fn read_storage(entry: &mut impl Read, dtype: DType, need: usize, shape: &[usize]) -> Result<Tensor> {
    fn direct<T: candle_core::WithDType>(entry: &mut impl Read, need: usize, shape: &[usize]) -> Result<Tensor> {
        let mut values = vec![T::from_f64(0.0); need / std::mem::size_of::<T>()];
        // SAFETY: T is f16, bf16 or f32: plain numbers for which every byte
        // pattern is a value, so the slice may be filled as bytes.
        let bytes = unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr() as *mut u8, need) };
        entry.read_exact(bytes)?;
        Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
    }
    match dtype {
        // The stored bytes are little-endian, as these types are here.
        DType::F16 if cfg!(target_endian = "little") => direct::<half::f16>(entry, need, shape),
        DType::BF16 if cfg!(target_endian = "little") => direct::<half::bf16>(entry, need, shape),
        DType::F32 if cfg!(target_endian = "little") => direct::<f32>(entry, need, shape),
        _ => {
            let mut bytes = vec![0u8; need];
            entry.read_exact(&mut bytes)?;
            Ok(Tensor::from_raw_buffer(&bytes, dtype, shape, &Device::Cpu)?)
        }
    }
}

// ---------------------------------------------------------------------------
// Hugging Face names <-> official names

/// State dicts nested under a key (`{"state_dict": ...}`) or saved from a
/// wrapper (`module.` from DDP) carry a prefix before every name: drop it.
fn strip_wrapper_prefix(tensors: Tensors) -> Tensors {
    let anchor = ["text_model.embeddings.token_embedding.weight", "token_embedding.weight"];
    let prefix = tensors
        .keys()
        .filter_map(|k| anchor.iter().find_map(|a| k.strip_suffix(a)))
        .min_by_key(|p| p.len())
        .unwrap_or("")
        .to_string();
    if prefix.is_empty() {
        return tensors;
    }
    tensors.into_iter().filter_map(|(k, t)| Some((k.strip_prefix(&prefix)?.to_string(), t))).collect()
}

fn looks_like_hf(tensors: &Tensors) -> bool {
    tensors.keys().any(|k| k.starts_with("text_model.") || k.starts_with("vision_model."))
}

/// Per-layer renames between HF `encoder.layers.N.` and official `resblocks.N.`.
const LAYER_RENAMES: [(&str, &str); 8] = [
    ("self_attn.out_proj.weight", "attn.out_proj.weight"),
    ("self_attn.out_proj.bias", "attn.out_proj.bias"),
    ("layer_norm1.weight", "ln_1.weight"),
    ("layer_norm1.bias", "ln_1.bias"),
    ("layer_norm2.weight", "ln_2.weight"),
    ("layer_norm2.bias", "ln_2.bias"),
    ("mlp.fc1.weight", "mlp.c_fc.weight"),
    ("mlp.fc1.bias", "mlp.c_fc.bias"),
];
const LAYER_RENAMES_2: [(&str, &str); 2] =
    [("mlp.fc2.weight", "mlp.c_proj.weight"), ("mlp.fc2.bias", "mlp.c_proj.bias")];

/// Renames outside the layers; projections are transposed separately.
const TOP_RENAMES: [(&str, &str); 12] = [
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
    ("text_model.final_layer_norm.weight", "ln_final.weight"),
    ("text_model.final_layer_norm.bias", "ln_final.bias"),
    ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
    ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
    ("vision_model.pre_layrnorm.weight", "visual.ln_pre.weight"),
    ("vision_model.pre_layrnorm.bias", "visual.ln_pre.bias"),
    ("vision_model.post_layernorm.weight", "visual.ln_post.weight"),
    ("vision_model.post_layernorm.bias", "visual.ln_post.bias"),
    ("logit_scale", "logit_scale"),
];

/// (HF tower prefix, official tower prefix)
const TOWERS: [(&str, &str); 2] =
    [("text_model.encoder.layers.", "transformer.resblocks."), ("vision_model.encoder.layers.", "visual.transformer.resblocks.")];

fn layer_renames() -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    LAYER_RENAMES.iter().chain(LAYER_RENAMES_2.iter())
}

fn hf_to_official(mut hf: Tensors, path: &Path) -> Result<Tensors> {
    let mut out = HashMap::new();
    for (from, to) in TOP_RENAMES {
        if let Some(t) = hf.remove(from) {
            out.insert(to.to_string(), t);
        }
    }
    for (proj_from, proj_to) in [("text_projection.weight", "text_projection"), ("visual_projection.weight", "visual.proj")] {
        if let Some(t) = hf.remove(proj_from) {
            out.insert(proj_to.to_string(), t.t()?.contiguous()?);
        }
    }
    for (hf_prefix, prefix) in TOWERS {
        for i in 0..count_layers(&hf, hf_prefix) {
            let from = format!("{hf_prefix}{i}.");
            let to = format!("{prefix}{i}.");
            for (a, b) in layer_renames() {
                if let Some(t) = hf.remove(&format!("{from}{a}")) {
                    out.insert(format!("{to}{b}"), t);
                }
            }
            for kind in ["weight", "bias"] {
                let parts: Vec<Tensor> = ["q", "k", "v"]
                    .iter()
                    .map(|p| format!("{from}self_attn.{p}_proj.{kind}"))
                    .map(|k| hf.remove(&k).with_context(|| format!("{}: missing tensor '{k}'", path.display())))
                    .collect::<Result<_>>()?;
                out.insert(format!("{to}attn.in_proj_{kind}"), Tensor::cat(&parts, 0)?);
            }
        }
    }
    // Whatever is left (position_ids buffers, extra heads) is reported as ignored.
    out.extend(hf);
    Ok(out)
}

/// Official state dict -> Hugging Face `CLIPModel` names (for `convert`).
/// The text tables and projections are the family's
/// ([`crate::family::Rules::hf_text_tensors`]: FG-CLIP keeps both paths under
/// its own names), and so are the tensors it carries unread.
pub fn official_to_hf(ckpt: &Checkpoint) -> Result<Vec<(String, Tensor)>> {
    let rules = ckpt.config.family.rules();
    let mut out = rules.hf_text_tensors(ckpt)?;
    for (to, from) in TOP_RENAMES {
        if from == "positional_embedding" {
            continue;
        }
        if let Some(t) = ckpt.tensors.get(from) {
            out.push((to.to_string(), t.clone()));
        }
    }
    for key in rules.carried_keys() {
        if let Some(t) = ckpt.tensors.get(*key) {
            out.push((key.to_string(), t.clone()));
        }
    }
    out.push(("visual_projection.weight".into(), ckpt.get("visual.proj")?.t()?.contiguous()?));
    let layers = [ckpt.config.text.layers, ckpt.config.vision.layers];
    let widths = [ckpt.config.text.width, ckpt.config.vision.width];
    for (((hf_prefix, prefix), n), width) in TOWERS.iter().zip(layers).zip(widths) {
        for i in 0..n {
            let hf = format!("{hf_prefix}{i}.");
            let off = format!("{prefix}{i}.");
            for (a, b) in layer_renames() {
                out.push((format!("{hf}{a}"), ckpt.get(&format!("{off}{b}"))?.clone()));
            }
            for kind in ["weight", "bias"] {
                let packed = ckpt.get(&format!("{off}attn.in_proj_{kind}"))?;
                for (j, p) in ["q", "k", "v"].iter().enumerate() {
                    let part = packed.narrow(0, j * width, width)?.contiguous()?;
                    out.push((format!("{hf}self_attn.{p}_proj.{kind}"), part));
                }
            }
        }
    }
    Ok(out)
}

fn count_layers(tensors: &Tensors, prefix: &str) -> usize {
    tensors
        .keys()
        .filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok())
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Architecture inference

fn dims(tensors: &Tensors, key: &str, path: &Path) -> Result<Vec<usize>> {
    match tensors.get(key) {
        Some(t) => Ok(t.dims().to_vec()),
        None => bail!("{}: missing tensor '{key}'", path.display()),
    }
}

/// As the official `build_model`: heads = width / 64, layers counted from keys.
fn infer_config(tensors: &Tensors, path: &Path) -> Result<Config> {
    infer_config_with_heads(tensors, path, [None, None])
}

/// [`infer_config`] with the (text, vision) heads a config file gives.
fn infer_config_with_heads(tensors: &Tensors, path: &Path, heads: [Option<usize>; 2]) -> Result<Config> {
    if !tensors.contains_key("visual.proj") && tensors.keys().any(|k| k.starts_with("visual.layer1.")) {
        bail!("{}: ResNet image towers (RN50, RN101, ...) are not supported; use a ViT checkpoint", path.display());
    }
    if !tensors.contains_key("visual.conv1.weight") && !tensors.contains_key("token_embedding.weight") {
        bail!(
            "{}: not a CLIP checkpoint (no 'visual.conv1.weight' or 'token_embedding.weight'; \
             found keys like {:?})",
            path.display(),
            tensors.keys().take(3).collect::<Vec<_>>()
        );
    }
    let conv = dims(tensors, "visual.conv1.weight", path)?;
    let vpos = dims(tensors, "visual.positional_embedding", path)?;
    if conv.len() != 4 || vpos.len() != 2 {
        bail!("{}: 'visual.conv1.weight' must be [width, 3, patch, patch], got {conv:?}", path.display());
    }
    let grid = ((vpos[0].saturating_sub(1)) as f64).sqrt().round() as usize;
    if grid * grid + 1 != vpos[0] {
        bail!("{}: 'visual.positional_embedding' has {} rows, not grid*grid + 1", path.display(), vpos[0]);
    }
    let vwidth = conv[0];
    let twidth = dims(tensors, "ln_final.weight", path)?[0];
    let vision = VisionConfig {
        width: vwidth,
        layers: count_layers(tensors, "visual.transformer.resblocks."),
        heads: match heads[1] {
            Some(h) => h,
            None => official_heads(vwidth, "vision", path)?,
        },
        mlp_width: dims(tensors, "visual.transformer.resblocks.0.mlp.c_fc.weight", path)?[0],
        patch_size: conv[3],
        image_size: conv[3] * grid,
    };
    let text = TextConfig {
        width: twidth,
        layers: count_layers(tensors, "transformer.resblocks."),
        heads: match heads[0] {
            Some(h) => h,
            None => official_heads(twidth, "text", path)?,
        },
        mlp_width: dims(tensors, "transformer.resblocks.0.mlp.c_fc.weight", path)?[0],
        // Long-CLIP and FG-CLIP: the second table holds the long positions
        // (so a cut first table is the one reported).
        context_length: match tensors.get(family::longclip::RES_KEY) {
            Some(res) => res.dims()[0],
            None => dims(tensors, "positional_embedding", path)?[0],
        },
        vocab_size: dims(tensors, "token_embedding.weight", path)?[0],
        keep_positions: KEEP_POSITIONS,
    };
    // From the image side when there is one, so a bad text projection (of
    // either path) is the one reported.
    let embed_dim = match tensors.get("visual.proj") {
        Some(p) => *p.dims().last().unwrap_or(&0),
        None => *dims(tensors, "text_projection", path)?.last().unwrap_or(&0),
    };
    Ok(Config { embed_dim, text, vision, activation: Activation::QuickGelu, family: Family::LongClip })
}

fn official_heads(width: usize, tower: &str, path: &Path) -> Result<usize> {
    let heads = width / 64;
    if heads == 0 || width % heads != 0 {
        bail!(
            "{}: {tower} width {width} does not split into heads of 64 (the official code uses heads = width / 64)",
            path.display()
        );
    }
    Ok(heads)
}

fn config_from_hf(hf: &serde_json::Value, tensors: &Tensors, path: &Path) -> Result<Config> {
    let heads = [hf_count(hf, Some("text_config"), "num_attention_heads", path)?, hf_count(hf, Some("vision_config"), "num_attention_heads", path)?];
    let mut config = infer_config_with_heads(tensors, path, heads)?;
    if let Some(k) = hf_count(hf, None, HF_KEEP_KEY, path)? {
        config.text.keep_positions = k;
    }
    let act = match hf.get("text_config").and_then(|s| s.get("hidden_act")) {
        None => None,
        Some(v) => Some(v.as_str().with_context(|| {
            format!("{}: config.json's 'text_config.hidden_act' is {v}, expected a string such as \"quick_gelu\"", path.display())
        })?),
    };
    config.activation = match act {
        None | Some("quick_gelu") => Activation::QuickGelu,
        Some("gelu") => Activation::Gelu,
        Some(other) => bail!("{}: unsupported hidden_act '{other}' in config.json", path.display()),
    };
    Ok(config)
}

/// A positive integer field of an HF config.json (`section.key`, or `key`
/// at the top level), if present; any other JSON value is an error naming
/// config.json and the field rather than a value silently ignored.
fn hf_count(hf: &serde_json::Value, section: Option<&str>, key: &str, path: &Path) -> Result<Option<usize>> {
    let value = match section {
        Some(s) => hf.get(s).and_then(|s| s.get(key)),
        None => hf.get(key),
    };
    let Some(value) = value else {
        return Ok(None);
    };
    match value.as_u64() {
        Some(n) if n > 0 => Ok(Some(n as usize)),
        _ => {
            let field = section.map_or(key.to_string(), |s| format!("{s}.{key}"));
            bail!("{}: config.json's '{field}' is {value}, expected a positive integer", path.display())
        }
    }
}

/// Every tensor the model reads, with its expected shape.
pub fn expected_shapes(c: &Config, long_clip: bool) -> Vec<(String, Vec<usize>)> {
    let (t, v) = (&c.text, &c.vision);
    let mut s: Vec<(String, Vec<usize>)> = vec![
        ("token_embedding.weight".into(), vec![t.vocab_size, t.width]),
        ("positional_embedding".into(), vec![t.context_length, t.width]),
        ("ln_final.weight".into(), vec![t.width]),
        ("ln_final.bias".into(), vec![t.width]),
        ("text_projection".into(), vec![t.width, c.embed_dim]),
        ("visual.class_embedding".into(), vec![v.width]),
        ("visual.conv1.weight".into(), vec![v.width, 3, v.patch_size, v.patch_size]),
        ("visual.positional_embedding".into(), vec![v.grid() * v.grid() + 1, v.width]),
        ("visual.ln_pre.weight".into(), vec![v.width]),
        ("visual.ln_pre.bias".into(), vec![v.width]),
        ("visual.ln_post.weight".into(), vec![v.width]),
        ("visual.ln_post.bias".into(), vec![v.width]),
        ("visual.proj".into(), vec![v.width, c.embed_dim]),
    ];
    if long_clip {
        s.push(("positional_embedding_res".into(), vec![t.context_length, t.width]));
    }
    s.extend(c.family.rules().extra_shapes(c));
    block_shapes("transformer.resblocks.", t.layers, t.width, t.mlp_width, &mut s);
    block_shapes("visual.transformer.resblocks.", v.layers, v.width, v.mlp_width, &mut s);
    s
}

fn block_shapes(prefix: &str, layers: usize, w: usize, mlp: usize, out: &mut Vec<(String, Vec<usize>)>) {
    for i in 0..layers {
        let p = format!("{prefix}{i}.");
        out.extend([
            (format!("{p}attn.in_proj_weight"), vec![3 * w, w]),
            (format!("{p}attn.in_proj_bias"), vec![3 * w]),
            (format!("{p}attn.out_proj.weight"), vec![w, w]),
            (format!("{p}attn.out_proj.bias"), vec![w]),
            (format!("{p}ln_1.weight"), vec![w]),
            (format!("{p}ln_1.bias"), vec![w]),
            (format!("{p}mlp.c_fc.weight"), vec![mlp, w]),
            (format!("{p}mlp.c_fc.bias"), vec![mlp]),
            (format!("{p}mlp.c_proj.weight"), vec![w, mlp]),
            (format!("{p}mlp.c_proj.bias"), vec![w]),
            (format!("{p}ln_2.weight"), vec![w]),
            (format!("{p}ln_2.bias"), vec![w]),
        ]);
    }
}

/// The tensors the model reads, plus those its family carries unread (still
/// listed as ignored: the model does not use them); the rest are dropped and
/// listed.
fn keep_model_keys(mut tensors: Tensors, config: &Config) -> (Tensors, Vec<String>) {
    let long_clip = tensors.contains_key("positional_embedding_res");
    let mut wanted: Vec<String> = expected_shapes(config, long_clip).into_iter().map(|(k, _)| k).collect();
    wanted.push("logit_scale".into());
    let mut kept: Tensors = wanted.iter().filter_map(|k| tensors.remove_entry(k)).collect();
    let mut ignored: Vec<String> = tensors.keys().cloned().collect();
    for key in config.family.rules().carried_keys() {
        if let Some(t) = tensors.remove(*key) {
            kept.insert(key.to_string(), t);
        }
    }
    ignored.sort();
    (kept, ignored)
}

/// Checks every tensor the model reads against the config. `hf`: the file
/// used HF names, and errors give its key (and its layout, for the
/// transposed projections) rather than ours.
fn check_shapes(ckpt: &Checkpoint, hf: bool) -> Result<()> {
    let c = &ckpt.config;
    for (tower, heads, width) in [("text", c.text.heads, c.text.width), ("vision", c.vision.heads, c.vision.width)] {
        if heads == 0 || width % heads != 0 {
            bail!("{}: {tower} width {width} is not divisible by {heads} heads", ckpt.path.display());
        }
    }
    if c.text.layers == 0 || c.vision.layers == 0 {
        bail!("{}: no transformer layers found (text {}, vision {})", ckpt.path.display(), c.text.layers, c.vision.layers);
    }
    if c.text.keep_positions > c.text.context_length {
        bail!(
            "{}: keep_positions {} is more than the {} text positions",
            ckpt.path.display(),
            c.text.keep_positions,
            c.text.context_length
        );
    }
    for (key, shape) in expected_shapes(c, ckpt.is_long_clip()) {
        let (name, transposed) = if hf { file_key(&key, c.family) } else { (key.clone(), false) };
        let stored = |dims: &[usize]| -> Vec<usize> {
            let mut d = dims.to_vec();
            if transposed {
                d.reverse();
            }
            d
        };
        match ckpt.tensors.get(&key) {
            None => bail!("{}: missing tensor '{name}' (expected shape {:?})", ckpt.path.display(), stored(&shape)),
            Some(t) if t.dims() != shape.as_slice() => bail!(
                "{}: tensor '{name}' has shape {:?}, expected {:?}",
                ckpt.path.display(),
                stored(t.dims()),
                stored(&shape)
            ),
            Some(t) if !t.dtype().is_float() => bail!(
                "{}: tensor '{name}' has dtype {:?}, expected a float type",
                ckpt.path.display(),
                t.dtype()
            ),
            Some(_) => {}
        }
    }
    Ok(())
}

/// The HF key a file stores an official-named tensor under (the family's
/// own names first), and whether it is stored transposed (`nn.Linear`
/// projections). The attention's `in_proj_weight` is three HF tensors.
fn file_key(official: &str, family: Family) -> (String, bool) {
    use family::fgclip;
    if family == Family::FgClip {
        let own = match official {
            "positional_embedding" => Some((fgclip::ORI_KEY, false)),
            family::longclip::RES_KEY => Some((fgclip::RES_KEY, false)),
            "text_projection" => Some((fgclip::FILIP_KEY, true)),
            fgclip::SHORT_POSITIONS_NAME => Some((fgclip::SHORT_POSITION_KEY, false)),
            fgclip::SHORT_PROJECTION_NAME => Some((fgclip::SHORT_PROJECTION_KEY, true)),
            _ => None,
        };
        if let Some((key, transposed)) = own {
            return (key.to_string(), transposed);
        }
    }
    if let Some((from, _)) = TOP_RENAMES.iter().find(|(_, to)| *to == official) {
        return (from.to_string(), false);
    }
    match official {
        "text_projection" => return ("text_projection.weight".into(), true),
        "visual.proj" => return ("visual_projection.weight".into(), true),
        _ => {}
    }
    for (hf_prefix, prefix) in TOWERS {
        let Some((layer, rest)) = official.strip_prefix(prefix).and_then(|r| r.split_once('.')) else {
            continue;
        };
        if let Some((from, _)) = layer_renames().find(|(_, to)| *to == rest) {
            return (format!("{hf_prefix}{layer}.{from}"), false);
        }
        if let Some(kind) = rest.strip_prefix("attn.in_proj_") {
            return (format!("{hf_prefix}{layer}.self_attn.{{q,k,v}}_proj.{kind} (stacked)"), false);
        }
    }
    (official.to_string(), false)
}

// ---------------------------------------------------------------------------
// Presets and random weights (benchmarks, tests)

impl Config {
    /// The released architectures: `longclip-b` (ViT-B/16) and `longclip-l` (ViT-L/14).
    pub fn preset(name: &str) -> Result<Config> {
        let (embed_dim, tw, th, vw, vl, vh, patch) = match name {
            "longclip-b" | "b" => (512, 512, 8, 768, 12, 12, 16),
            "longclip-l" | "l" => (768, 768, 12, 1024, 24, 16, 14),
            // `longclip demo`'s model: a narrow text tower keeps the f16 token table at 6 MB.
            "demo" => return Ok(Config::demo()),
            other => bail!("unknown preset '{other}' (expected longclip-b, longclip-l or demo)"),
        };
        Ok(Config {
            embed_dim,
            text: TextConfig { width: tw, layers: 12, heads: th, mlp_width: 4 * tw, context_length: 248, vocab_size: 49408, keep_positions: KEEP_POSITIONS },
            vision: VisionConfig { width: vw, layers: vl, heads: vh, mlp_width: 4 * vw, patch_size: patch, image_size: 224 },
            activation: Activation::QuickGelu,
            family: Family::LongClip,
        })
    }
}

impl Config {
    /// FLOPs of one image through the vision tower (patch stem, blocks,
    /// projection), multiply-adds counted as two: the convention of peak
    /// TFLOP/s figures. ViT-B/16 at 224 px: 35.2 GFLOP ("17.6 GFLOPs" in
    /// multiply-adds).
    pub fn vision_flops(&self) -> f64 {
        let v = &self.vision;
        let patches = (v.image_size / v.patch_size).pow(2) as f64;
        let tokens = patches + 1.0;
        let w = v.width as f64;
        let per_layer = 2.0 * tokens * (4.0 * w * w + 2.0 * w * v.mlp_width as f64) + 4.0 * tokens * tokens * w;
        let stem = 2.0 * patches * (3 * v.patch_size * v.patch_size) as f64 * w;
        stem + per_layer * v.layers as f64 + 2.0 * w * self.embed_dim as f64
    }

    /// FLOPs of one text of `tokens` tokens through the text tower, counted
    /// densely (the causal half of attention our CPU kernel skips is
    /// counted, as PyTorch computes it), multiply-adds as two.
    pub fn text_flops(&self, tokens: usize) -> f64 {
        let t = &self.text;
        let (l, w) = (tokens as f64, t.width as f64);
        let per_layer = 2.0 * l * (4.0 * w * w + 2.0 * w * t.mlp_width as f64) + 4.0 * l * l * w;
        per_layer * t.layers as f64 + 2.0 * w * self.embed_dim as f64
    }

    /// The small model `longclip demo` ships (trained on `longclip synth` scenes).
    pub fn demo() -> Config {
        Config {
            embed_dim: 64,
            text: TextConfig { width: 64, layers: 4, heads: 1, mlp_width: 256, context_length: 248, vocab_size: 49408, keep_positions: KEEP_POSITIONS },
            vision: VisionConfig { width: 128, layers: 4, heads: 2, mlp_width: 512, patch_size: 16, image_size: 96 },
            activation: Activation::QuickGelu,
            family: Family::LongClip,
        }
    }
}

/// A Long-CLIP checkpoint of the given shapes with random weights drawn as
/// the official `initialize_parameters` does (scaled normals), for
/// benchmarks and tests. Matrices are f16 like the released files.
pub fn random(config: &Config, seed: u64) -> Result<Checkpoint> {
    let mut rng = SplitMix(seed);
    let mut tensors = HashMap::new();
    for (key, shape) in expected_shapes(config, true) {
        let n: usize = shape.iter().product();
        let t = if key.contains("ln_") && key.ends_with(".weight") {
            Tensor::ones(shape, DType::F32, &Device::Cpu)?
        } else if key.ends_with("bias") {
            Tensor::zeros(shape, DType::F32, &Device::Cpu)?
        } else {
            let fan_in = *shape.last().unwrap_or(&1) as f32;
            let std = if shape.len() == 1 { 0.02 } else { fan_in.powf(-0.5) };
            let values: Vec<f32> = (0..n).map(|_| rng.normal() * std).collect();
            let t = Tensor::from_vec(values, shape.clone(), &Device::Cpu)?;
            if shape.len() >= 2 && !key.contains("positional") { t.to_dtype(DType::F16)? } else { t }
        };
        tensors.insert(key, t);
    }
    tensors.insert("logit_scale".into(), Tensor::new(&[(1.0f32 / 0.07).ln()], &Device::Cpu)?.reshape(())?);
    let path = PathBuf::from(format!("random-seed{seed}"));
    Ok(Checkpoint { path, format: Format::Safetensors, config: config.clone(), tensors, ignored: vec![] })
}

#[cfg(test)]
mod flops_tests {
    use super::Config;

    #[test]
    fn vit_b16_costs_about_35_gflop_an_image() {
        // The usual "17.6 GFLOPs" of ViT-B/16 counts multiply-adds.
        let flops = Config::preset("longclip-b").unwrap().vision_flops();
        assert!((flops / 2e9 - 17.6).abs() < 0.3, "{}", flops / 2e9);
        let l = Config::preset("longclip-l").unwrap().vision_flops();
        assert!((l / 2e9 - 81.1).abs() < 1.0, "{}", l / 2e9);
    }

    #[test]
    fn text_flops_grow_with_length_as_the_dense_count() {
        let c = Config::preset("longclip-b").unwrap();
        // 12 layers of width 512 at 77 tokens: about 6 GFLOP.
        assert!((c.text_flops(77) / 1e9 - 5.95).abs() < 0.1, "{}", c.text_flops(77) / 1e9);
        assert!(c.text_flops(248) > 3.0 * c.text_flops(77));
    }
}
