"""Autograd basics, as the PyTorch tutorial (seeds 000 and 002) writes it, on fusegrad.

requires_grad and grad_fn, x + 2 -> y * y * 3 -> mean -> backward gives x.grad == 4.5,
requires_grad_(), a vector-Jacobian product through a data-dependent while loop,
no_grad(), detach() and eq().all().
"""

import fusegrad as torch

x = torch.ones(2, 2, requires_grad=True)
print(x)

y = x + 2
print(y)
print(y.grad_fn)

z = y * y * 3
out = z.mean()
print(z, out)

a = torch.randn(2, 2)
a = (a * 3) / (a - 1)
print(a.requires_grad)
a.requires_grad_(True)
print(a.requires_grad)
b = (a * a).sum()
print(b.grad_fn)

# out is a scalar, so out.backward() is out.backward(torch.tensor(1.))
out.backward()
print(x.grad)  # d(out)/dx = 3 * (x + 2) / 2 = 4.5

# autograd computes vector-Jacobian products: y is not a scalar, so pass v to backward()
x = torch.randn(3, requires_grad=True)
y = x * 2
while y.data.norm() < 1000:
    y = y * 2
print(y)

v = torch.tensor([0.1, 1.0, 0.0001], dtype=torch.float)
y.backward(v)
print(x.grad)  # v * 2**k, where y = x * 2**k

print(x.requires_grad)
print((x**2).requires_grad)
with torch.no_grad():
    print((x**2).requires_grad)

print(x.requires_grad)
y = x.detach()
print(y.requires_grad)
print(x.eq(y).all())
