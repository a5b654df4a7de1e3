"""cnclip::linear_int8 (src/linear_int8.cpp), called from Python's torch on the model module, against
the product it stands for computed exactly: the activations quantized to uint8 with LibTorch's own
parameters and rounding (torch.quantize_per_tensor), int64 sums, then the scales and the bias in
float64. The operator quantizes with its own vector loops (AVX2 and SSE2 with plain tails) and finds
the activations' range in its own pass; a value misplaced, dropped or rounded otherwise moves a result
by x_scale * w_scale * w (~1e-2 here), far past the float32 rounding allowed (1e-3)."""
import os
import unittest

import torch

# Run twice by CTest: as the CPU runs it, and with CNCLIP_INT8_ISA=sse2 (the loops of a CPU without
# AVX2).
torch.ops.load_library(os.environ["CNCLIP_MODEL_MODULE"])
torch.set_num_threads(2)


def vnni():
    """Whether the route takes all 8 bits (src/linear_int8.cpp, full_range_is_exact): a CPU with VNNI,
    as oneDNN sees it."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA"):
        return None  # lowered: either may hold
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    return " avx512_vnni" in flags or " avx_vnni" in flags


def packed_weights(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    scales = w.abs().amax(1).double() / 127
    wq = torch.quantize_per_channel(w, scales, torch.zeros(n, dtype=torch.long), 0, torch.qint8)
    bias = torch.randn(n, generator=g)
    return wq, bias, torch.ops.quantized.linear_prepack(wq, bias)


def exact(x, wq, bias, reduce_range):
    """The product the operator computes, in integers and float64."""
    scale, zero_point = torch._choose_qparams_per_tensor(x, reduce_range)
    xq = torch.quantize_per_tensor(x, scale, zero_point, torch.quint8)
    sums = (xq.int_repr().long() - zero_point) @ wq.int_repr().long().t()
    w_scale = wq.q_per_channel_scales().double()
    return scale * w_scale * sums.double() + bias.double()


class LinearInt8(unittest.TestCase):
    def check(self, x, wq, bias, packed):
        y = torch.ops.cnclip.linear_int8(x, packed, True, 0)
        self.assertEqual(y.shape, (x.shape[0], wq.shape[0]))
        diffs = {bits: (y.double() - exact(x, wq, bias, bits == 7)).abs().max().item() for bits in (7, 8)}
        want = vnni()
        for bits, diff in diffs.items():
            if want is None or want == (bits == 8):
                self.assertLess(min(diffs.values()) if want is None else diff, 1e-3,
                                "%s: %d-bit activations differ by %s" % (tuple(x.shape), bits, diff))
        return diffs

    def test_every_length_through_the_vector_loops_and_their_tails(self):
        # Row lengths that end in each loop (32, 16, 8 values) and in the scalar tail; the extreme
        # values put last, where a dropped tail would miss them.
        for k in (768, 3072, 100, 37, 8, 1):
            wq, bias, packed = packed_weights(24, k, seed=k)
            for rows in (1, 3, 14):
                g = torch.Generator().manual_seed(rows * 1000 + k)
                x = torch.randn(rows, k, generator=g)
                x.view(-1)[-1] = 9.5
                x.view(-1)[-2 if x.numel() > 1 else -1] = -7.25
                with self.subTest(k=k, rows=rows):
                    self.check(x, wq, bias, packed)

    def test_values_of_one_sign_and_a_constant_row(self):
        # The range widened to hold 0 (LibTorch's choice): all positive, all negative, all equal.
        wq, bias, packed = packed_weights(16, 200, seed=1)
        g = torch.Generator().manual_seed(2)
        for x in (torch.rand(5, 200, generator=g) + 0.5, -torch.rand(5, 200, generator=g) - 0.5,
                  torch.full((5, 200), 0.75)):
            with self.subTest(first=x[0, 0].item()):
                self.check(x, wq, bias, packed)

    def test_many_rows_split_over_threads(self):
        # An image batch's size (more than 65,536 values): the range and quantization in two parts of
        # 77,700 values (not a multiple of 32: each ends in the loops' tails), each with extremes (the
        # first part's largest in its tail, its smallest first).
        wq, bias, packed = packed_weights(32, 777, seed=3)
        x = torch.randn(200, 777, generator=torch.Generator().manual_seed(4))
        x[0, 0], x[99, 776], x[150, 3], x[199, 776] = -11.0, 13.0, -10.0, 12.0
        self.check(x, wq, bias, packed)

    def test_values_that_are_not_finite_take_libtorchs_kernel(self):
        # LibTorch's own kernel then answers (an error, for such values): the route's answer must be
        # the same wherever the value sits (the vector loops, their tails).
        def outcome(op, *args):
            try:
                return op(*args).nan_to_num()
            except RuntimeError as e:
                return str(e).splitlines()[0]

        wq, bias, packed = packed_weights(8, 100, seed=5)
        for bad in (float("nan"), float("inf"), float("-inf")):
            for where in (0, 40, 99, 250, 299):
                x = torch.randn(3, 100, generator=torch.Generator().manual_seed(where))
                x.view(-1)[where] = bad
                with self.subTest(bad=bad, where=where):
                    ours = outcome(torch.ops.cnclip.linear_int8, x, packed, True, 0)
                    libtorch = outcome(torch.ops.quantized.linear_dynamic, x, packed, True)
                    if isinstance(libtorch, str):
                        self.assertEqual(ours, libtorch)
                    else:
                        self.assertTrue(torch.equal(ours, libtorch))

if __name__ == "__main__":
    unittest.main()
