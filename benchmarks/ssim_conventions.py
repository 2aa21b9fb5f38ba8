"""The gap between the two SSIM conventions of convrnn.metrics ('openstl' minus 'standard') for typical
prediction errors (blur, noise, a shift, a blank frame), on 256 synthetic Moving-MNIST-like 64x64 frames
(two glyphs of random strokes moving as Moving MNIST's digits do; no MNIST download needed).
Prints the markdown rows recorded in docs/references.md.

    python benchmarks/ssim_conventions.py
"""
import torch
import torch.nn.functional as F

from convrnn.data.moving_mnist import generate_moving_mnist
from convrnn.metrics import ssim


def glyphs(n: int, g: torch.Generator) -> torch.Tensor:
    """n 28x28 uint8 'digits': four random horizontal strokes each, slightly thickened."""
    out = []
    for _ in range(n):
        img = torch.zeros(1, 1, 28, 28)
        for _ in range(4):
            y, x = torch.randint(4, 24, (2,), generator=g).tolist()
            img[..., max(y - 2, 0):y + 2, max(x - 6, 0):x + 6] = 1.0
        out.append((F.avg_pool2d(img, 3, 1, 1) > 0.3).float()[0, 0] * 255)
    return torch.stack(out).to(torch.uint8)


def blur(t: torch.Tensor, sigma: float) -> torch.Tensor:
    k = torch.arange(-7, 8, dtype=t.dtype)
    w = torch.exp(-0.5 * (k / sigma) ** 2)
    w = w / w.sum()
    return F.conv2d(F.conv2d(t, w.view(1, 1, 1, -1), padding=(0, 7)), w.view(1, 1, -1, 1), padding=(7, 0))


def main() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    frames = torch.as_tensor(generate_moving_mnist(glyphs(50, g).numpy(), 64, seq_len=10, image_size=64,
                                                   num_digits=2)).float()
    frames = frames / frames.max() if frames.max() > 1 else frames
    x = frames.reshape(-1, 1, 64, 64)[:256]
    noise = lambda s: (x + s * torch.randn_like(x)).clamp(0, 1)   # noqa: E731
    preds = {"blur, σ = 1 px": blur(x, 1.0), "blur, σ = 2 px": blur(x, 2.0), "blur, σ = 3 px": blur(x, 3.0),
             "noise, σ = 0.05": noise(0.05), "noise, σ = 0.1": noise(0.1), "noise, σ = 0.2": noise(0.2),
             "shifted 2 px": torch.roll(x, 2, -1), "all black": torch.zeros_like(x)}
    for name, p in preds.items():
        a, b = ssim(p, x, "standard").mean().item(), ssim(p, x, "openstl").mean().item()
        print(f"| {name} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")


if __name__ == "__main__":
    main()
