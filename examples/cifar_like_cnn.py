"""A Concrete-ML-style quantization-aware CNN on generated CIFAR-sized images (32x32x3),
trained with qatfhe, compiled to an exact integer circuit and simulated.

    python examples/cifar_like_cnn.py [--epochs 3] [--bits 4] [--train 3000] [--small]

The data is generated (nothing is downloaded): each image is Gaussian noise with one bright
bar drawn at a random place, in one of three colour channels, horizontal or vertical, and a
dimmer distracting bar of another colour and any orientation; the label (6 classes) is the
bright bar's colour x orientation.  The rule needs convolutions (orientation), brightness
comparisons and is translation invariant (max pooling helps).

The network, blocks of conv 3x3 -> BatchNorm2d -> QuantReLU -> MaxPool2d as in
Concrete-ML's CIFAR examples:
    QuantIdentity -> [QuantConv2d(c_in, c, 3, padding=1, bias=False) -> BatchNorm2d(c)
    -> QuantReLU -> MaxPool2d(2)] x 3 -> Flatten -> QuantLinear(., 6)
Compiled, each BatchNorm2d is folded into the QuantReLU's table lookup and each MaxPool2d
is a maximum of integer codes.  Prints the accuracy of the QAT network (fake-quant, eval
mode) and of the circuit (fhe="simulate"), how many test images agree (predictions and
bit-identical logits), every integer value's bit width and the pairwise max lookups of
the pools.  Exit status 0 only when every test image agrees bit for bit.
--small runs a reduced size (fewer, smaller images and channels) in seconds, for tests."""
import argparse
import sys
import time

import numpy as np

from qatfhe import nn, optim
from qatfhe.compile import compile_qat_model

F32 = np.float32
N_CLASSES = 6


def draw_bar(image, channel, vertical, amplitude, rng):
    """Add a bar of 2-3 pixels by size/3..size/2 at a random place of image (3, size, size)."""
    size = image.shape[-1]
    length = int(rng.integers(size // 3, size // 2 + 1))
    width = int(rng.integers(2, 4))
    along = int(rng.integers(0, size - length + 1))
    across = int(rng.integers(0, size - width + 1))
    rows, cols = slice(across, across + width), slice(along, along + length)
    if vertical:
        rows, cols = cols, rows
    image[channel, rows, cols] += F32(amplitude)


def bar_images(n, size, seed):
    """(X float32 (n, 3, size, size), y int64 (n,)): noise, one bright bar (amplitude
    1.2..2) and one dim bar of another colour (0.4..0.7) per image; label = 2 * the bright
    bar's colour channel + its orientation (0 horizontal, 1 vertical)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(0.0, 0.35, size=(n, 3, size, size)).astype(F32)
    y = rng.integers(0, N_CLASSES, n)
    for i in range(n):
        channel, vertical = divmod(int(y[i]), 2)
        draw_bar(X[i], channel, vertical, rng.uniform(1.2, 2.0), rng)
        other = (channel + int(rng.integers(1, 3))) % 3
        draw_bar(X[i], other, int(rng.integers(0, 2)), rng.uniform(0.4, 0.7), rng)
    return X, y


def qat_cnn(bits, channels, size, seed):
    layers = [nn.QuantIdentity(bit_width=bits)]
    c_in = 3
    for c in channels:
        layers += [nn.QuantConv2d(c_in, c, 3, padding=1, bias=False, weight_bit_width=bits),
                   nn.BatchNorm2d(c), nn.QuantReLU(bit_width=bits), nn.MaxPool2d(2)]
        c_in, size = c, size // 2
    layers += [nn.Flatten(), nn.QuantLinear(c_in * size * size, N_CLASSES,
                                            weight_bit_width=bits)]
    return nn.Sequential(*layers, seed=seed)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=3000, help="training images")
    parser.add_argument("--calib", type=int, default=1000,
                        help="training images that calibrate the bit-width report")
    parser.add_argument("--test", type=int, default=1000, help="test images")
    parser.add_argument("--small", action="store_true",
                        help="reduced size: 16x16 images, 600/100 images, channels 4-8-8, "
                             "4 epochs")
    args = parser.parse_args(argv)
    size, channels = 32, (16, 32, 32)
    if args.small:
        size, channels = 16, (4, 8, 8)
        args.train, args.test, args.epochs = 600, 100, 4
    start = time.perf_counter()
    X_train, y_train = bar_images(args.train, size, args.seed)
    X_test, y_test = bar_images(args.test, size, args.seed + 1)
    print(f"generated bars: {args.train} training and {args.test} test images of "
          f"{size}x{size}x3, {N_CLASSES} classes")

    t = time.perf_counter()
    net = qat_cnn(args.bits, channels, size, args.seed)
    optim.AdamW(net.parameters(), lr=3e-3)
    history = net.fit(X_train, y_train, epochs=args.epochs, batch_size=32, seed=args.seed,
                      progress=False)
    net.eval()
    qat_logits = np.asarray(net(X_test))
    qat_pred = qat_logits.argmax(axis=1)
    qat_acc = float(np.mean(qat_pred == y_test))
    print(f"{args.bits}-bit QAT (fake-quant)  accuracy {qat_acc:.2%}   (training accuracy "
          f"{history['accuracy'][-1]:.2%}; {args.epochs} epochs, {time.perf_counter() - t:.1f} s)")

    t = time.perf_counter()
    module = compile_qat_model(net, X_train[:args.calib])
    logits = module.forward(X_test, fhe="simulate")
    pred = logits.argmax(axis=1)
    sim_acc = float(np.mean(pred == y_test))
    same_pred = int(np.sum(pred == qat_pred))
    same_logits = int(np.sum(np.all(logits == qat_logits, axis=1)))
    print(f"integer circuit        accuracy {sim_acc:.2%}   (compile + simulate "
          f"{time.perf_counter() - t:.1f} s)")
    print(f"agreement with fake-quant: {same_pred}/{len(X_test)} predictions, "
          f"{same_logits}/{len(X_test)} logit vectors bit for bit")

    print(f"\nmax accumulator: {module.accumulator_bit_width} bits; circuit bit width "
          f"(every value): {module.max_bit_width} bits measured on {min(args.calib, args.train)} "
          f"training images, "
          f"{module.worst_case_bit_width} bits worst case over all inputs")
    print(f"{'value':28s} {'kind':14s} {'range':>14s} {'bits':>4s} {'worst':>5s}")
    for r in module.bit_width_report():
        print(f"{r['name']:28s} {r['kind']:14s} {'[%d, %d]' % (r['min'], r['max']):>14s} "
              f"{r['bits']:4d} {r['static_bits']:5d}")
    for op in module.ops:
        if op.kind == "maxpool":
            info = op.info
            print(f"{op.name}: {info['pairwise_max_lookups']} pairwise max lookups per image "
                  f"on a - b of {info['max_diff_bits']} bits ([{info['max_diff_min']}, "
                  f"{info['max_diff_max']}])")
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0 if same_pred == len(X_test) and same_logits == len(X_test) else 1


if __name__ == "__main__":
    sys.exit(main())
