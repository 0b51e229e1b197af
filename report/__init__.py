"""The study report: reads a study folder (plan.json, status.json, run folders, the collector's CSVs, analysis,
scale results) and writes report/report.typ, its figures, LaTeX tables and report.pdf.

Modules by role: folder (reading the study folder), tables (typst + LaTeX booktabs), plots, heatmaps, scale
(recall–scalability), references (bibliography), sections (introduction, related work, method, data),
discussion (results text, the three questions, conclusion), markup (typst escaping), render (assembly, compile).
"""
