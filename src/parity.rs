//! Parity checks against the PyTorch reference fixtures (`tests/fixtures/README.md` defines
//! every value). Used by the test suite on the CPU and by `softtune parity` on a GPU machine,
//! so a CUDA build is checked with the same code and the same numbers.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::{
    DType, Distribution, Int, Tensor, TensorData,
    backend::{AutodiffBackend, Backend},
};
use safetensors::{Dtype, SafeTensors};

use crate::model::config::Activation;
use crate::model::kernels::{head_loss_and_grad, soft_capped};
use crate::model::ops::{self, AttnOpts, KvCache};
use crate::model::weights::Weights;
use crate::model::{CausalLm, Kernels, LoadOptions, ModelConfig, TrainKernels};

/// The reference tensors of one fixture.
pub struct Reference {
    pub f32s: HashMap<String, (Vec<usize>, Vec<f32>)>,
    pub ids: Vec<i64>,
    pub ids_shape: [usize; 2],
}

impl Reference {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("{}: not a safetensors file: {e:?}", path.display()))?;
        let mut f32s = HashMap::new();
        let mut ids = Vec::new();
        let mut ids_shape = [0, 0];
        for (name, view) in st.tensors() {
            let data = view.data();
            match view.dtype() {
                Dtype::F32 => {
                    let v = data
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    f32s.insert(name, (view.shape().to_vec(), v));
                }
                Dtype::I64 if view.shape().len() == 2 => {
                    ids = data
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                        .collect();
                    ids_shape = [view.shape()[0], view.shape()[1]];
                }
                other => bail!("{}: unexpected {other:?} tensor `{name}`", path.display()),
            }
        }
        Ok(Self {
            f32s,
            ids,
            ids_shape,
        })
    }

    pub fn get(&self, key: &str) -> Result<&(Vec<usize>, Vec<f32>)> {
        self.f32s
            .get(key)
            .ok_or_else(|| anyhow!("the reference has no `{key}`"))
    }
}

/// max |a − b| / max |b|: the error relative to the scale of the reference tensor.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let scale = want
        .iter()
        .fold(0f64, |m, &x| m.max((x as f64).abs()))
        .max(1e-12);
    let diff = got.iter().zip(want).fold(0f64, |m, (&a, &b)| {
        let d = (a as f64 - b as f64).abs();
        if d.is_nan() { f64::INFINITY } else { m.max(d) }
    });
    diff / scale
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| anyhow!("reading a tensor back failed: {e:?}"))
}

/// One quantity of a fixture checked: its relative error and the bound it must keep
/// ([`tolerance_for`] for the fixture's model).
#[derive(Debug, Clone, Copy)]
pub struct Checked {
    pub what: &'static str,
    pub err: f64,
    pub bound: f64,
}

impl Checked {
    pub fn pass(&self) -> bool {
        self.err <= self.bound
    }
}

/// Relative errors of one fixture, with their bounds: logits, logits_with_prompt, the
/// latter read through a key/value cache (`cached_logits`), loss, loss_with_prompt and
/// grad_soft_prompt.
pub fn check_fixture<B: TrainKernels>(
    dir: &Path,
    device: &B::Device,
    dtype: DType,
) -> Result<Vec<Checked>> {
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let weights = Weights::open(&crate::model::source::local_weights(dir)?)?;
    let r = Reference::read(&dir.join("reference.safetensors"))?;
    let model = CausalLm::<B>::load(&cfg, &weights, device, LoadOptions { dtype })?;
    let ids_i32: Vec<i32> = r.ids.iter().map(|&x| x as i32).collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids_i32, r.ids_shape), device);
    let (pshape, pdata) = r.get("soft_prompt")?.clone();
    if pshape.len() != 2 || pshape[1] != cfg.d_embed {
        bail!(
            "soft prompt shape {pshape:?} does not match d_embed {}",
            cfg.d_embed
        );
    }
    let prompt = Tensor::<B, 2>::from_data(
        TensorData::new(pdata, [pshape[0], pshape[1]]),
        (device, DType::F32),
    )
    .require_grad();

    let mut out = Vec::new();
    let mut cmp_to = |what: &'static str, key: &str, got: Vec<f32>| -> Result<()> {
        out.push(Checked {
            what,
            err: rel_err(&got, &r.get(key)?.1),
            bound: tolerance_for(dtype, what, cfg.activation),
        });
        Ok(())
    };
    cmp_to(
        "logits",
        "logits",
        values(model.logits(ids.clone()).detach())?,
    )?;
    let with_prompt = model.logits_with_prompt(prompt.clone(), ids.clone());
    cmp_to(
        "logits_with_prompt",
        "logits_with_prompt",
        values(with_prompt.detach())?,
    )?;
    let cached = cached_logits(&model, prompt.clone().detach(), ids.clone())?;
    cmp_to("cached_logits", "logits_with_prompt", values(cached)?)?;
    let mut cmp = |what: &'static str, got: Vec<f32>| cmp_to(what, what, got);
    cmp("loss", values(model.loss(ids.clone()).detach())?)?;
    let loss = model.loss_with_prompt(prompt.clone(), ids);
    cmp("loss_with_prompt", values(loss.clone().detach())?)?;
    let grads = loss.backward();
    if model.embedding_matrix().grad(&grads).is_some() {
        bail!("the frozen embedding matrix received a gradient");
    }
    let g = prompt
        .grad(&grads)
        .ok_or_else(|| anyhow!("the soft prompt received no gradient"))?;
    cmp("grad_soft_prompt", values(g)?)?;
    Ok(out)
}

/// Logits with the prompt, read as generation reads them: the prompt and the first half of
/// the text at once, then two tokens, then one at a time, each after the positions before
/// it through a key/value cache ([`KvCache`]).
fn cached_logits<B: Kernels>(
    model: &CausalLm<B>,
    prompt: Tensor<B, 2>,
    ids: Tensor<B, 2, Int>,
) -> Result<Tensor<B, 3>> {
    let (n, t) = (prompt.dims()[0], ids.dims()[1]);
    let half = t / 2;
    if !model.cache_holds(n + half, n + t) {
        bail!(
            "the fixture's text is not one a key/value cache can be checked on (LongRoPE switches factors within it)"
        );
    }
    let mut cache = KvCache::default();
    let first = model.prompt_inputs(prompt, ids.clone().narrow(1, 0, half));
    let mut hidden = vec![model.hidden_cached(first, Some(&mut cache))];
    let mut at = half;
    while at < t {
        let step = if at == half { 2.min(t - at) } else { 1 };
        let x = model.embed_tokens(ids.clone().narrow(1, at, step));
        hidden.push(model.hidden_cached(x, Some(&mut cache)));
        at += step;
    }
    Ok(model.head(Tensor::cat(hidden, 1)))
}

/// One greedy continuation of `generation.json` (made by `make_generation.py`) as softtune
/// wrote it.
#[derive(Debug, Clone)]
pub struct Continuation {
    /// `model case with_prompt|without_prompt`.
    pub what: String,
    /// Tokens that equal transformers' before the first that differs.
    pub matching: usize,
    /// transformers' tokens.
    pub want: usize,
    /// Whether softtune wrote exactly transformers' tokens.
    pub pass: bool,
}

/// Greedy continuations, with and without each fixture's soft prompt, against
/// transformers' in `root/generation.json` (every case whose model folder is under `root`).
/// The picks match only where rounding cannot flip them: the file's smallest margin is
/// above 1e-3, which float32 keeps and 16-bit weights do not.
pub fn check_generation<B: Kernels>(
    root: &Path,
    device: &B::Device,
    dtype: DType,
) -> Result<Vec<Continuation>> {
    use crate::model::generate::{Sampling, generate_rows};
    let path = root.join("generation.json");
    let label = path.display().to_string();
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("{label}: cannot read"))?,
    )
    .with_context(|| format!("{label}: not JSON"))?;
    let bad = || anyhow!("{label}: not a generation reference (see make_generation.py)");
    let ids = |v: &serde_json::Value| -> Result<Vec<u32>> {
        v.as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|x| x.as_u64().map(|x| x as u32).ok_or_else(bad))
            .collect()
    };
    let new = json["new_tokens"].as_u64().ok_or_else(bad)? as usize;
    let eos = json["eos"].as_u64().ok_or_else(bad)? as u32;
    let mut out = Vec::new();
    let mut loaded: Option<(String, CausalLm<B>, ModelConfig, Tensor<B, 2>)> = None;
    for case in json["cases"].as_array().ok_or_else(bad)? {
        let name = case["model"].as_str().ok_or_else(bad)?;
        let dir = root.join(name);
        if !dir.join("config.json").is_file() {
            continue;
        }
        if loaded.as_ref().is_none_or(|(n, ..)| n != name) {
            let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
            let weights = Weights::open(&crate::model::source::local_weights(&dir)?)?;
            let model = CausalLm::<B>::load(&cfg, &weights, device, LoadOptions { dtype })?;
            let r = Reference::read(&dir.join("reference.safetensors"))?;
            let (shape, data) = r.get("soft_prompt")?.clone();
            let prompt = Tensor::<B, 2>::from_data(
                TensorData::new(data, [shape[0], shape[1]]),
                (device, DType::F32),
            );
            loaded = Some((name.to_string(), model, cfg, prompt));
        }
        let Some((_, model, cfg, prompt)) = &loaded else {
            unreachable!("loaded just above")
        };
        let text = ids(&case["input_ids"])?;
        let greedy = Sampling::greedy(new);
        // Greedy, then (where the file has them) greedy with the repetition penalty.
        let mut runs = vec![(case, greedy, "")];
        let penalised = &case["penalised"];
        if !penalised.is_null() {
            let s = Sampling {
                repetition_penalty: penalised["repetition_penalty"].as_f64().ok_or_else(bad)?,
                repetition_range: penalised["repetition_range"].as_u64().ok_or_else(bad)? as usize,
                ..greedy
            };
            runs.push((penalised, s, " penalised"));
        }
        let vocab = model.embed_rows();
        // Plain and penalised are written together, as one batch: each must still be
        // transformers' continuation.
        let rows: Vec<Sampling> = runs.iter().map(|(_, s, _)| *s).collect();
        for (p, key) in [(Some(prompt), "with_prompt"), (None, "without_prompt")] {
            let got = generate_rows(
                model,
                p,
                &text,
                vocab,
                cfg.context_length(),
                &[eos],
                &rows,
                |_, _| Ok(()),
            )?;
            for ((want_in, _, label), got) in runs.iter().zip(got) {
                let want = ids(&want_in[key])?;
                let matching = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
                out.push(Continuation {
                    what: format!(
                        "{name} {} {key}{label}",
                        case["case"].as_str().unwrap_or("?")
                    ),
                    matching,
                    want: want.len(),
                    pass: got == want,
                });
            }
        }
    }
    Ok(out)
}

/// One comparison of a fast path against plain Burn: `(what, relative error)`.
pub type KernelCheck = (String, f64);

/// `sum(out · w)`: a loss whose gradient with respect to `out` is `w`, so every output
/// element gets a different gradient.
fn weighted_sum<B: AutodiffBackend, const D: usize>(
    out: Tensor<B, D>,
    w: &Tensor<B::InnerBackend, D>,
) -> Tensor<B, 1> {
    (out * Tensor::from_inner(w.clone())).sum()
}

fn random<B: Backend, const D: usize>(
    shape: [usize; D],
    dev: &B::Device,
    dtype: DType,
) -> Tensor<B, D> {
    Tensor::<B, D>::random(shape, Distribution::Normal(0.0, 1.0), (dev, DType::F32)).cast(dtype)
}

/// Compares `Kernels::matmul` on `lhs · rhs` with an exact product on the host (float64, from
/// the same inputs): the forward product on the inner backend, then the gradients of both
/// operands through autodiff. Not Burn's own matmul: on CUDA, CubeCL's float32 matmul runs
/// on TF32 tensor cores (relative errors of 3e-4 on an H200, above the float32 bound).
fn check_matmul<B: TrainKernels, const D: usize>(
    name: &str,
    lhs: Tensor<B::InnerBackend, D>,
    rhs: Tensor<B::InnerBackend, D>,
    out: &mut Vec<KernelCheck>,
) -> Result<()> {
    let fast = <B::InnerBackend as Kernels>::matmul(lhs.clone(), rhs.clone());
    let w = random::<B::InnerBackend, D>(fast.dims(), &fast.device(), fast.dtype());
    let exact = host_matmul(
        &values(lhs.clone())?,
        &lhs.dims(),
        &values(rhs.clone())?,
        &rhs.dims(),
        &values(w.clone())?,
    );
    out.push((format!("matmul {name}"), rel_err(&values(fast)?, &exact[0])));
    let l = Tensor::<B, D>::from_inner(lhs).require_grad();
    let r = Tensor::<B, D>::from_inner(rhs).require_grad();
    let g = weighted_sum(<B as Kernels>::matmul(l.clone(), r.clone()), &w).backward();
    let grad = |t: &Tensor<B, D>| t.grad(&g).ok_or_else(|| anyhow!("no gradient"));
    out.push((
        format!("matmul {name} dA"),
        rel_err(&values(grad(&l)?)?, &exact[1]),
    ));
    out.push((
        format!("matmul {name} dB"),
        rel_err(&values(grad(&r)?)?, &exact[2]),
    ));
    Ok(())
}

/// `[y, dA, dB]` for `y = A · B` (row-major values; batch dimensions broadcast where one
/// operand has 1) and the loss `sum(y · w)`: `dA = w · Bᵀ`, `dB = Aᵀ · w`, each summed over
/// the batch dimensions its operand was broadcast along. Float64 accumulation.
fn host_matmul(
    a: &[f32],
    ashape: &[usize],
    b: &[f32],
    bshape: &[usize],
    w: &[f32],
) -> [Vec<f32>; 3] {
    let d = ashape.len();
    let (m, k, n) = (ashape[d - 2], ashape[d - 1], bshape[d - 1]);
    let batch: Vec<usize> = (0..d - 2).map(|i| ashape[i].max(bshape[i])).collect();
    let count: usize = batch.iter().product();
    // Offset of batch `index` in an operand of batch dimensions `dims`, `size` elements each.
    let offset = |dims: &[usize], mut index: usize, size: usize| {
        let (mut off, mut stride) = (0, size);
        for i in (0..dims.len()).rev() {
            let pos = index % batch[i];
            index /= batch[i];
            if dims[i] != 1 {
                off += pos * stride;
            }
            stride *= dims[i];
        }
        off
    };
    let mut y = vec![0f64; count * m * n];
    let mut da = vec![0f64; a.len()];
    let mut db = vec![0f64; b.len()];
    for bi in 0..count {
        let (ao, bo, yo) = (
            offset(&ashape[..d - 2], bi, m * k),
            offset(&bshape[..d - 2], bi, k * n),
            bi * m * n,
        );
        for i in 0..m {
            for p in 0..k {
                let av = a[ao + i * k + p] as f64;
                let mut dav = 0f64;
                for j in 0..n {
                    let bv = b[bo + p * n + j] as f64;
                    let wv = w[yo + i * n + j] as f64;
                    y[yo + i * n + j] += av * bv;
                    dav += wv * bv;
                    db[bo + p * n + j] += av * wv;
                }
                da[ao + i * k + p] += dav;
            }
        }
    }
    [y, da, db].map(|v| v.into_iter().map(|x| x as f32).collect())
}

/// Every fast path of the backend's [`Kernels`] against plain Burn on the same device and
/// dtype: matmuls in the layouts the models use (a linear layer's transposed weight,
/// batched keys as a transposed view, a broadcast operand, a block of query rows), causal
/// attention (grouped-query, global and local), cross-entropy, the LM head's loss by
/// chunks, LayerNorm and RMSNorm, SiLU and tanh-GELU, forward and gradients.
pub fn kernel_checks<B: TrainKernels>(dev: &B::Device, dtype: DType) -> Result<Vec<KernelCheck>> {
    type I<B> = <B as AutodiffBackend>::InnerBackend;
    let mut out = Vec::new();
    B::seed(dev, 1);
    let x = random::<I<B>, 2>([300, 96], dev, dtype);
    let w = random::<I<B>, 2>([130, 96], dev, dtype).transpose();
    check_matmul::<B, 2>("linear", x, w, &mut out)?;
    let q = random::<I<B>, 4>([2, 3, 40, 16], dev, dtype);
    let k = random::<I<B>, 4>([2, 3, 50, 16], dev, dtype);
    check_matmul::<B, 4>("q·kᵀ", q.clone(), k.clone().swap_dims(2, 3), &mut out)?;
    check_matmul::<B, 4>(
        "row block",
        q.clone().narrow(2, 8, 16),
        k.clone().swap_dims(2, 3),
        &mut out,
    )?;
    let shared = random::<I<B>, 4>([1, 1, 16, 24], dev, dtype);
    check_matmul::<B, 4>("broadcast", q.clone(), shared, &mut out)?;
    let per_head = random::<I<B>, 4>([1, 3, 16, 24], dev, dtype);
    check_matmul::<B, 4>("half broadcast", q, per_head, &mut out)?;

    // Stream order (`cublas::order_check`): a product queued right behind element-wise work
    // and read by element-wise work right after it, against the same steps with a read to
    // the host (which waits for everything) between them. Where products run outside the
    // backend's queue (cuBLAS beside CubeCL's stream), the operands are large enough that a
    // product started early, or read before it finished, would differ; elsewhere they are
    // small.
    let side = if <I<B> as Kernels>::matmul_off_queue() {
        4096
    } else {
        96
    };
    let err = crate::model::cublas::order_check::<I<B>>(dev, side, |l, r, _| {
        Ok(<I<B> as Kernels>::matmul(l, r))
    })
    .map_err(|e| anyhow!(e))?;
    out.push(("matmul stream order".into(), err));

    // One block of positions, then three (128, 128 and 24 positions) for the blocked path.
    // Soft-capped scores (Gemma 2) on a local window too.
    for (label, window, b, s, softcap) in [
        ("causal", None, 2, 33, None),
        ("local", Some(5), 2, 33, None),
        ("blocks", Some(150), 1, 280, None),
        ("capped", Some(20), 2, 33, Some(0.8)),
    ] {
        let opts = AttnOpts {
            scale: 0.25,
            window,
            softcap,
        };
        let (q, k, v) = (
            random::<I<B>, 4>([b, 4, s, 16], dev, dtype),
            random::<I<B>, 4>([b, 2, s, 16], dev, dtype),
            random::<I<B>, 4>([b, 2, s, 16], dev, dtype),
        );
        let w = random::<I<B>, 4>([b, 4, s, 16], dev, dtype);
        let run = |kernel: bool| -> Result<Vec<Vec<f32>>> {
            let [q, k, v] =
                [&q, &k, &v].map(|t| Tensor::<B, 4>::from_inner(t.clone()).require_grad());
            let y = if kernel {
                <B as Kernels>::causal_attention(q.clone(), k.clone(), v.clone(), opts)
            } else {
                ops::plain_attention(q.clone(), k.clone(), v.clone(), opts)
            };
            let g = weighted_sum(y.clone(), &w).backward();
            let grad = |t: &Tensor<B, 4>| t.grad(&g).ok_or_else(|| anyhow!("no gradient"));
            Ok(vec![
                values(y.detach())?,
                values(grad(&q)?)?,
                values(grad(&k)?)?,
                values(grad(&v)?)?,
            ])
        };
        let (fast, plain) = (run(true)?, run(false)?);
        for (i, what) in ["out", "dq", "dk", "dv"].iter().enumerate() {
            out.push((
                format!("attention {label} {what}"),
                rel_err(&fast[i], &plain[i]),
            ));
        }
    }

    let logits = random::<I<B>, 3>([2, 9, 300], dev, dtype) * 3.0;
    let targets = Tensor::<I<B>, 2, Int>::random([2, 9], Distribution::Uniform(0.0, 300.0), dev);
    let run = |kernel: bool| -> Result<(Vec<f32>, Vec<f32>)> {
        let x = Tensor::<B, 3>::from_inner(logits.clone()).require_grad();
        let t = Tensor::<B, 2, Int>::from_inner(targets.clone());
        let loss = if kernel {
            <B as Kernels>::cross_entropy(x.clone(), t)
        } else {
            ops::plain_cross_entropy(x.clone(), t)
        };
        let g = (loss.clone() * 3.0).backward();
        let dx = x.grad(&g).ok_or_else(|| anyhow!("no gradient"))?;
        Ok((values(loss.detach())?, values(dx)?))
    };
    let ((fl, fg), (pl, pg)) = (run(true)?, run(false)?);
    out.push(("cross-entropy loss".into(), rel_err(&fl, &pl)));
    out.push(("cross-entropy dlogits".into(), rel_err(&fg, &pg)));

    // The LM head's loss by uneven chunks of rows, its gradient made during the forward
    // pass (as the training backend runs it), against Burn's autodiff of the whole logits.
    let h = random::<I<B>, 2>([18, 48], dev, dtype);
    let w = random::<I<B>, 2>([300, 48], dev, dtype).transpose();
    let targets = Tensor::<I<B>, 1, Int>::random([18], Distribution::Uniform(0.0, 300.0), dev);
    // Soft-capped logits (Gemma 2) too, against Burn's autodiff of the tanh.
    for (label, softcap) in [("", None), (" capped", Some(2.0))] {
        let (cl, cg) = head_loss_and_grad(h.clone(), w.clone(), None, targets.clone(), 5, softcap);
        let (cl, cg) = (values(cl)?, values(cg)?);
        let ha = Tensor::<B, 2>::from_inner(h.clone()).require_grad();
        let logits =
            <B as Kernels>::matmul(ha.clone(), Tensor::from_inner(w.clone())).cast(DType::F32);
        let loss = ops::plain_cross_entropy(
            soft_capped(logits, softcap).unsqueeze::<3>(),
            Tensor::from_inner(targets.clone()).unsqueeze::<2>(),
        );
        let g = loss.clone().backward();
        let dh = ha.grad(&g).ok_or_else(|| anyhow!("no gradient"))?;
        out.push((
            format!("head loss{label} by chunks"),
            rel_err(&cl, &values(loss.detach())?),
        ));
        out.push((format!("head loss{label} dh"), rel_err(&cg, &values(dh)?)));
    }

    // Norms with frozen weights, on rows with an offset (LayerNorm's mean matters).
    // LayerNorm's weight and bias are float32 as the models load them, RMSNorm's weight is
    // in the model's dtype.
    let x = random::<I<B>, 3>([2, 9, 48], dev, dtype) * 3.0 + 1.0;
    let w16 = random::<I<B>, 1>([48], dev, dtype);
    let w32 = random::<I<B>, 1>([48], dev, DType::F32);
    let bias = random::<I<B>, 1>([48], dev, DType::F32);
    let wy = random::<I<B>, 3>([2, 9, 48], dev, dtype);
    for (name, rms) in [("layer norm", false), ("rms norm", true)] {
        let run = |kernel: bool| -> Result<(Vec<f32>, Vec<f32>)> {
            let xa = Tensor::<B, 3>::from_inner(x.clone()).require_grad();
            let w = if rms { &w16 } else { &w32 };
            let (wa, ba) = (
                Tensor::from_inner(w.clone()),
                Tensor::from_inner(bias.clone()),
            );
            let y = match (kernel, rms) {
                (true, true) => <B as Kernels>::rms_norm(xa.clone(), wa, 1e-5),
                (true, false) => <B as Kernels>::layer_norm(xa.clone(), wa, ba, 1e-5),
                (false, true) => ops::plain_rms_norm(xa.clone(), wa, 1e-5),
                (false, false) => ops::plain_layer_norm(xa.clone(), wa, ba, 1e-5),
            };
            let g = weighted_sum(y.clone(), &wy).backward();
            let dx = xa.grad(&g).ok_or_else(|| anyhow!("no gradient"))?;
            Ok((values(y.detach())?, values(dx)?))
        };
        let ((fy, fg), (py, pg)) = (run(true)?, run(false)?);
        out.push((name.into(), rel_err(&fy, &py)));
        out.push((format!("{name} dx"), rel_err(&fg, &pg)));
    }

    // Wide enough to reach the saturated tails. Exact GELU is not compared here: its plain
    // reference runs Burn 0.21's `gelu_backward`, which on the CubeCL backends is the tanh
    // approximation's derivative; the fixtures (`gpt_neox`) check softtune's own instead.
    let x = random::<I<B>, 3>([2, 9, 70], dev, dtype) * 6.0;
    let w = random::<I<B>, 3>([2, 9, 70], dev, dtype);
    for (name, act) in [
        ("silu", Activation::Silu),
        ("gelu-tanh", Activation::GeluTanh),
    ] {
        let run = |kernel: bool| -> Result<(Vec<f32>, Vec<f32>)> {
            let xa = Tensor::<B, 3>::from_inner(x.clone()).require_grad();
            let y = if kernel {
                <B as Kernels>::activation(xa.clone(), act)
            } else {
                ops::plain_activation(xa.clone(), act)
            };
            let g = weighted_sum(y.clone(), &w).backward();
            let dx = xa.grad(&g).ok_or_else(|| anyhow!("no gradient"))?;
            Ok((values(y.detach())?, values(dx)?))
        };
        let ((fy, fg), (py, pg)) = (run(true)?, run(false)?);
        out.push((name.into(), rel_err(&fy, &py)));
        out.push((format!("{name} dx"), rel_err(&fg, &pg)));
    }

    // The gated MLP (llama family): one `[g | u]` input against Burn's graph of
    // `silu(g) · u` over the same input's halves.
    let gu = random::<I<B>, 3>([2, 9, 140], dev, dtype) * 6.0;
    let run = |kernel: bool| -> Result<(Vec<f32>, Vec<f32>)> {
        let xa = Tensor::<B, 3>::from_inner(gu.clone()).require_grad();
        let y = if kernel {
            <B as Kernels>::gated(xa.clone(), Activation::Silu)
        } else {
            let (g, u) = (xa.clone().narrow(2, 0, 70), xa.clone().narrow(2, 70, 70));
            ops::plain_activation(g, Activation::Silu) * u
        };
        let g = weighted_sum(y.clone(), &w).backward();
        let dx = xa.grad(&g).ok_or_else(|| anyhow!("no gradient"))?;
        Ok((values(y.detach())?, values(dx)?))
    };
    let ((fy, fg), (py, pg)) = (run(true)?, run(false)?);
    out.push(("gated silu".into(), rel_err(&fy, &py)));
    out.push(("gated silu dx".into(), rel_err(&fg, &pg)));
    Ok(out)
}

/// Runs [`kernel_checks`] and prints one line each; returns whether all are within
/// [`tolerance`]`(dtype)`.
pub fn run_kernel_checks<B: TrainKernels>(dev: &B::Device, dtype: DType) -> Result<bool> {
    let bound = tolerance(dtype);
    println!(
        "{:<28} {}",
        "kernel check",
        format_args!(
            "max relative error vs plain Burn, matmuls vs an exact product (bound {bound:e})"
        )
    );
    let mut ok = true;
    let start = std::time::Instant::now();
    for (what, err) in kernel_checks::<B>(dev, dtype)? {
        let pass = err <= bound;
        ok &= pass;
        println!("{what:<28} {err:.2e}  {}", if pass { "ok" } else { "FAIL" });
    }
    println!(
        "kernel checks took {:.1} s (on a GPU, kernel compilation included)",
        start.elapsed().as_secs_f64()
    );
    Ok(ok)
}

/// The tolerance for values (logits, losses) computed with weights in `dtype`: float32 must
/// match to 1e-4; f16 keeps 11 significant bits, bf16 8.
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 | DType::F64 => 1e-4,
        DType::F16 => 2e-2,
        _ => 5e-2,
    }
}

/// The tolerance for `quantity` (one of the reference keys) in `dtype`, for a model whose
/// MLP uses `activation`. The soft prompt's gradient comes back through every layer's
/// backward pass in 16 bits, so in f16 and bf16 it gets twice the values' bound (measured on
/// the fixtures on the CPU: at most 1.3e-2 in f16 and 5.2e-2 in bf16, which rounds 8×
/// coarser).
///
/// With ReLU (OPT) the 16-bit gradient is not a smooth function of the rounding: an MLP
/// pre-activation within one rounding of zero lands on either side, and that unit's whole
/// gradient is there or not. On `opt_proj_postln` in f16, perturbing the attention output
/// by less than one f16 rounding (8 random draws, blocked attention on WebGPU) moved the
/// prompt gradient's error between 2.8e-3 and 5.3e-2; the flash and blocked attention paths
/// differ there by 3 of 16,384 ReLU signs, and flash lands at 5.1e-2. So with ReLU the
/// gradient gets bf16's bound in f16 too.
pub fn tolerance_for(dtype: DType, quantity: &str, activation: Activation) -> f64 {
    match (dtype, quantity) {
        (DType::F32 | DType::F64, _) => tolerance(dtype),
        (_, "grad_soft_prompt") if activation == Activation::Relu => {
            2.0 * tolerance(dtype).max(tolerance(DType::BF16))
        }
        (_, "grad_soft_prompt") => 2.0 * tolerance(dtype),
        _ => tolerance(dtype),
    }
}

/// Every fixture folder (holding `reference.safetensors`) under `root`, sorted by name.
pub fn fixture_dirs(root: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut dirs: Vec<_> = std::fs::read_dir(root)
        .with_context(|| format!("{}: cannot list the fixtures folder", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("reference.safetensors").is_file())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        bail!(
            "{}: no fixture folders (with reference.safetensors) found",
            root.display()
        );
    }
    Ok(dirs)
}

/// Runs every fixture under `root` and prints one line each; returns whether all passed.
pub fn run_all<B: TrainKernels>(root: &Path, device: &B::Device, dtype: DType) -> Result<bool> {
    let tol = tolerance(dtype);
    let grad_tol = tolerance_for(dtype, "grad_soft_prompt", Activation::Gelu);
    let relu_tol = tolerance_for(dtype, "grad_soft_prompt", Activation::Relu);
    let names = [
        "logits",
        "logits_with_prompt",
        "cached_logits",
        "loss",
        "loss_with_prompt",
        "grad_soft_prompt",
    ];
    let bounds = if grad_tol == tol {
        format!("bound {tol:e}")
    } else if relu_tol == grad_tol {
        format!("bound {tol:e}, gradient {grad_tol:e}")
    } else {
        format!("bound {tol:e}, gradient {grad_tol:e}, with ReLU {relu_tol:e}")
    };
    println!(
        "{:<18} {}  (max relative error; {bounds})",
        "fixture",
        names.join("  ")
    );
    let mut ok = true;
    for dir in fixture_dirs(root)? {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Seconds per fixture: on a GPU, the first ones include compiling the kernels.
        let start = std::time::Instant::now();
        match check_fixture::<B>(&dir, device, dtype) {
            Ok(errs) => {
                let pass = errs.iter().all(Checked::pass);
                ok &= pass;
                let cols: Vec<String> = errs.iter().map(|c| format!("{:.2e}", c.err)).collect();
                println!(
                    "{name:<18} {}  {}  ({:.1} s)",
                    cols.join("  "),
                    if pass { "ok" } else { "FAIL" },
                    start.elapsed().as_secs_f64()
                );
            }
            Err(e) => {
                ok = false;
                println!("{name:<18} error: {e:#}");
            }
        }
    }
    if root.join("generation.json").is_file() {
        if dtype == DType::F32 {
            let start = std::time::Instant::now();
            match check_generation::<B>(root, device, dtype) {
                Ok(cases) => {
                    let failed: Vec<String> = cases
                        .iter()
                        .filter(|c| !c.pass)
                        .map(|c| format!("{} ({} of {} tokens)", c.what, c.matching, c.want))
                        .collect();
                    ok &= failed.is_empty() && !cases.is_empty();
                    println!(
                        "greedy continuations: {} of {} as transformers wrote them{}  ({:.1} s)",
                        cases.len() - failed.len(),
                        cases.len(),
                        if failed.is_empty() {
                            String::new()
                        } else {
                            format!("; differ: {}", failed.join(", "))
                        },
                        start.elapsed().as_secs_f64()
                    );
                }
                Err(e) => {
                    ok = false;
                    println!("greedy continuations: error: {e:#}");
                }
            }
        } else {
            println!(
                "greedy continuations: checked in float32 only (16-bit rounding flips close picks)"
            );
        }
    }
    Ok(ok)
}
