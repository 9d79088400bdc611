"""Training of students: one trainer loop, pluggable strategies (supervised, distillation)."""
