"""The bibliography of the report, as plain data written to refs.bib (BibTeX, read by typst and by LaTeX)."""
from __future__ import annotations

from pathlib import Path

# key → (entry type, fields); cited in the text as @key
REFERENCES: dict[str, tuple[str, dict[str, str]]] = {
    "netvlad": ("inproceedings", {
        "author": "Arandjelovi{\\'c}, Relja and Gronat, Petr and Torii, Akihiko and Pajdla, Tomas and Sivic, Josef",
        "title": "{NetVLAD}: {CNN} Architecture for Weakly Supervised Place Recognition",
        "booktitle": "IEEE Conference on Computer Vision and Pattern Recognition (CVPR)", "year": "2016"}),
    "gem": ("article", {
        "author": "Radenovi{\\'c}, Filip and Tolias, Giorgos and Chum, Ond{\\v{r}}ej",
        "title": "Fine-Tuning {CNN} Image Retrieval with No Human Annotation",
        "journal": "IEEE Transactions on Pattern Analysis and Machine Intelligence", "volume": "41",
        "number": "7", "pages": "1655--1668", "year": "2019"}),
    "masone2021survey": ("article", {
        "author": "Masone, Carlo and Caputo, Barbara", "title": "A Survey on Deep Visual Place Recognition",
        "journal": "IEEE Access", "volume": "9", "pages": "19516--19547", "year": "2021"}),
    "berton2022benchmark": ("inproceedings", {
        "author": "Berton, Gabriele and Mereu, Riccardo and Trivigno, Gabriele and Masone, Carlo and "
                  "Csurka, Gabriela and Sattler, Torsten and Caputo, Barbara",
        "title": "Deep Visual Geo-localization Benchmark",
        "booktitle": "IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)", "year": "2022"}),
    "sare": ("inproceedings", {
        "author": "Liu, Liu and Li, Hongdong and Dai, Yuchao",
        "title": "Stochastic Attraction-Repulsion Embedding for Large Scale Image Localization",
        "booktitle": "IEEE/CVF International Conference on Computer Vision (ICCV)", "year": "2019"}),
    "soenet": ("inproceedings", {
        "author": "Xia, Yan and Xu, Yusheng and Li, Shuang and Wang, Rui and Du, Juan and Cremers, Daniel and "
                  "Stilla, Uwe",
        "title": "{SOE-Net}: A Self-Attention and Orientation Encoding Network for Point Cloud based Place "
                 "Recognition",
        "booktitle": "IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)", "year": "2021"}),
    "solar": ("inproceedings", {
        "author": "Ng, Tony and Balntas, Vassileios and Tian, Yurun and Mikolajczyk, Krystian",
        "title": "{SOLAR}: Second-Order Loss and Attention for Image Retrieval",
        "booktitle": "European Conference on Computer Vision (ECCV)", "year": "2020"}),
    "vit": ("inproceedings", {
        "author": "Dosovitskiy, Alexey and Beyer, Lucas and Kolesnikov, Alexander and Weissenborn, Dirk and "
                  "Zhai, Xiaohua and Unterthiner, Thomas and Dehghani, Mostafa and Minderer, Matthias and "
                  "Heigold, Georg and Gelly, Sylvain and Uszkoreit, Jakob and Houlsby, Neil",
        "title": "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
        "booktitle": "International Conference on Learning Representations (ICLR)", "year": "2021"}),
    "cct": ("misc", {
        "author": "Hassani, Ali and Walton, Steven and Shah, Nikhil and Abuduweili, Abulikemu and Li, Jiachen "
                  "and Shi, Humphrey",
        "title": "Escaping the Big Data Paradigm with Compact Transformers",
        "howpublished": "arXiv:2104.05704", "year": "2021"}),
    "bert": ("inproceedings", {
        "author": "Devlin, Jacob and Chang, Ming-Wei and Lee, Kenton and Toutanova, Kristina",
        "title": "{BERT}: Pre-training of Deep Bidirectional Transformers for Language Understanding",
        "booktitle": "Conference of the North American Chapter of the Association for Computational "
                     "Linguistics (NAACL)", "year": "2019"}),
    "crn": ("inproceedings", {
        "author": "Kim, Hyo Jin and Dunn, Enrique and Frahm, Jan-Michael",
        "title": "Learned Contextual Feature Reweighting for Image Geo-Localization",
        "booktitle": "IEEE Conference on Computer Vision and Pattern Recognition (CVPR)", "year": "2017"}),
    "berton2021hybrid": ("inproceedings", {
        "author": "Berton, Gabriele Moreno and Paolicelli, Valerio and Masone, Carlo and Caputo, Barbara",
        "title": "Adaptive-Attentive Geolocalization from Few Queries: A Hybrid Approach",
        "booktitle": "IEEE/CVF Winter Conference on Applications of Computer Vision (WACV)", "year": "2021"}),
    "cbam": ("inproceedings", {
        "author": "Woo, Sanghyun and Park, Jongchan and Lee, Joon-Young and Kweon, In So",
        "title": "{CBAM}: Convolutional Block Attention Module",
        "booktitle": "European Conference on Computer Vision (ECCV)", "year": "2018"}),
    "nonlocal": ("inproceedings", {
        "author": "Wang, Xiaolong and Girshick, Ross and Gupta, Abhinav and He, Kaiming",
        "title": "Non-local Neural Networks",
        "booktitle": "IEEE Conference on Computer Vision and Pattern Recognition (CVPR)", "year": "2018"}),
    "msls": ("inproceedings", {
        "author": "Warburg, Frederik and Hauberg, S{\\o}ren and L{\\'o}pez-Antequera, Manuel and Gargallo, Pau "
                  "and Kuang, Yubin and Civera, Javier",
        "title": "{Mapillary Street-Level Sequences}: A Dataset for Lifelong Place Recognition",
        "booktitle": "IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)", "year": "2020"}),
    "resnet": ("inproceedings", {
        "author": "He, Kaiming and Zhang, Xiangyu and Ren, Shaoqing and Sun, Jian",
        "title": "Deep Residual Learning for Image Recognition",
        "booktitle": "IEEE Conference on Computer Vision and Pattern Recognition (CVPR)", "year": "2016"}),
    "facenet": ("inproceedings", {
        "author": "Schroff, Florian and Kalenichenko, Dmitry and Philbin, James",
        "title": "{FaceNet}: A Unified Embedding for Face Recognition and Clustering",
        "booktitle": "IEEE Conference on Computer Vision and Pattern Recognition (CVPR)", "year": "2015"}),
    "hadsell": ("inproceedings", {
        "author": "Hadsell, Raia and Chopra, Sumit and LeCun, Yann",
        "title": "Dimensionality Reduction by Learning an Invariant Mapping",
        "booktitle": "IEEE Conference on Computer Vision and Pattern Recognition (CVPR)", "year": "2006"}),
    "pitts": ("inproceedings", {
        "author": "Torii, Akihiko and Sivic, Josef and Pajdla, Tomas and Okutomi, Masatoshi",
        "title": "Visual Place Recognition with Repetitive Structures",
        "booktitle": "IEEE Conference on Computer Vision and Pattern Recognition (CVPR)", "year": "2013"}),
    "stlucia": ("inproceedings", {
        "author": "Milford, Michael J. and Wyeth, Gordon F.",
        "title": "Mapping a Suburb with a Single Camera Using a Biologically Inspired {SLAM} System",
        "booktitle": "IEEE International Conference on Robotics and Automation (ICRA)", "year": "2008"}),
    "faiss": ("article", {
        "author": "Johnson, Jeff and Douze, Matthijs and J{\\'e}gou, Herv{\\'e}",
        "title": "Billion-Scale Similarity Search with {GPUs}", "journal": "IEEE Transactions on Big Data",
        "volume": "7", "number": "3", "pages": "535--547", "year": "2021"}),
}


def bibtex() -> str:
    """All references as BibTeX entries."""
    entries = []
    for key, (kind, fields) in REFERENCES.items():
        body = ",\n".join(f"  {name} = {{{value}}}" for name, value in fields.items())
        entries.append(f"@{kind}{{{key},\n{body}\n}}\n")
    return "\n".join(entries)


def write_bibtex(path: Path) -> Path:
    """Write refs.bib and return its path."""
    path.write_text(bibtex())
    return path
