"""Tensor basics, after the notes of seed 003, on fusegrad: printing, the numpy bridge, dtype
conversion (.long() for labels), device placement, and gradients of y = w * x + b, which
accumulate over repeated backward(retain_graph=True) calls.
"""

import numpy as np

import fusegrad as torch

# multi-dimensional arrays print with their values laid out like PyTorch's
x = torch.tensor([[1, 2, 3], [4, 5, 6]])
print(x)
print(np.array([[1, 2, 3], [4, 5, 6]]))
print(torch.arange(24).reshape(2, 3, 4))
print(x.size(), x.dtype)

# tensor -> numpy array (shares memory) and back
a = torch.ones(2, 3)
n = a.numpy()
print(n)
b = torch.from_numpy(np.arange(6.0).reshape(2, 3))
print(b)

# dtype conversion: labels are long (int64), not int (int32)
f = torch.tensor([0.2, 1.7, 2.9])
print(f.int())
print(f.long())
labels = torch.tensor([0, 2, 1]).long()
print(labels, labels.dtype)

# GPU placement: only when CUDA is there
if torch.cuda.is_available():
    print(x.cuda())
else:
    print("CUDA is not available; tensors stay on", x.device)

# y = w * x + b, differentiated with respect to every input
x = torch.tensor([3.0], requires_grad=True)
w = torch.tensor([5.0], requires_grad=True)
b = torch.tensor([2.0], requires_grad=True)
y = w * x + b
print(y)
y.backward(retain_graph=True)
print(x.grad)  # dy/dx = w = 5
print(w.grad)  # dy/dw = x = 3
print(b.grad)  # dy/db = 1

# gradients accumulate: four more backward calls give five times the derivative
for _ in range(4):
    y.backward(retain_graph=True)
print(x.grad)  # 25
print(w.grad)  # 15
print(b.grad)  # 5
